"""The asynchronous validation pool on a real local Ray cluster with a logical GPU."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import ray
from conftest import tiny_tree, write_checkpoint

from raydr import config
from raydr.errors import RaydrError

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def local_ray():
    # One logical GPU: validators with num_gpus=0.25 share its reservation; code runs on CPU.
    ray.init(num_cpus=2, num_gpus=1, object_store_memory=150 * 1024**2, include_dashboard=False)
    yield
    ray.shutdown()


def _cfg(tmp_path: Path, dataset: Path, model: Path, **validation) -> config.RaydrConfig:
    tree = {
        **tiny_tree(f"pool-{tmp_path.name}", tmp_path, dataset, model),
        "validation": {
            "num_actors": 2,
            "num_gpus": 0.25,
            "num_cpus": 0,
            "sampling": {"strategy": "random", "size": 10, "seed": 3},
            **validation,
        },
    }
    return config.build(tree, "test").with_absolute_paths()


def _wait(pool, timeout: float = 120) -> None:
    from raydr.validation.pool import wait_idle

    assert wait_idle(pool, timeout_s=timeout, poll_s=0.2)


def test_two_checkpoints_validated_concurrently_and_match_evaluate(
    local_ray, tmp_path: Path, tiny_dataset: Path, tiny_model_dir: Path
) -> None:
    from raydr.evaluate import evaluate
    from raydr.validation.pool import start_pool
    from raydr.validation.sampling import read_subset, subset_path

    cfg = _cfg(tmp_path, tiny_dataset, tiny_model_dir)
    ckpts = [write_checkpoint(tmp_path / "ckpts", tiny_model_dir, s, cfg) for s in (10, 20)]
    pool = start_pool(cfg)
    # Warm both actors first so the timing below measures validation, not start-up.
    ray.get([a.warm.remote() for a in ray.get(pool.actor_handles.remote())])
    assert all(
        ray.get([pool.submit.remote("t", s, str(c)) for s, c in zip((10, 20), ckpts, strict=True)])
    )
    _wait(pool)
    rows = ray.get(pool.results.remote("t"))
    assert [r["step"] for r in rows] == [10, 20]
    a, b = (r["metrics"] for r in rows)
    assert a["started_at"] < b["finished_at"] and b["started_at"] < a["finished_at"], (
        "not concurrent"
    )
    subset = read_subset(subset_path(cfg))
    assert a["subset_size"] == len(subset) == 10 + 10  # 10 random + 10 judged docs
    # The pool and `raydr evaluate` on the same checkpoint and subset agree.
    for row, ckpt in zip(rows, ckpts, strict=True):
        direct = evaluate(cfg, model_path=str(ckpt), progress=False, subset=subset)
        for name, value in direct.metrics.items():
            assert row["metrics"][name] == pytest.approx(value, abs=1e-6), name
        assert row["metrics"]["checkpoint_step"] == row["step"]
        assert row["metrics"]["primary_metric"] == "nDCG@10"
    ray.kill(pool)


def _one_validator(tmp_path: Path, dataset: Path, model: Path, step: int = 1, **validation):
    """A pool of one validator, and the checkpoint of ``step`` to submit.
    → (config, checkpoint, pool)."""
    from raydr.validation.pool import start_pool

    cfg = _cfg(tmp_path, dataset, model, num_actors=1, **validation)
    ckpt = str(write_checkpoint(tmp_path / "ckpts", model, step, cfg))
    return cfg, ckpt, start_pool(cfg)


def test_rung_checkpoints_go_first_then_trials_take_turns(
    local_ray, tmp_path: Path, tiny_dataset: Path, tiny_model_dir: Path
) -> None:
    from raydr.validation.ledger import Ledger

    cfg, ckpt, pool = _one_validator(tmp_path, tiny_dataset, tiny_model_dir)
    # The one validator takes z's checkpoint at once and spends its cold start on it, while
    # the rest queue: trial a's three (the last at a rung), then trial b's two (the last too).
    assert ray.get(pool.submit.remote("z", 1, ckpt))
    queued = [("a", 4, False), ("a", 8, False), ("a", 12, True), ("b", 4, False), ("b", 8, True)]
    # One at a time: an async actor may start concurrent calls in any order.
    assert all(ray.get(pool.submit.remote(t, s, ckpt, rung)) for t, s, rung in queued)
    _wait(pool)
    order = [(r["trial"], r["step"]) for r in Ledger.for_run(cfg).rows() if r["status"] == "done"]
    # In arrival order this would be z1 a4 a8 a12 b4 b8: b's rung metric would wait for all of
    # a's checkpoints, and b for a's burst.
    assert order == [("z", 1), ("a", 12), ("b", 8), ("a", 4), ("b", 4), ("a", 8)]
    ray.kill(pool)


def test_a_stopped_trials_queued_checkpoints_are_cancelled_with_one_closing_row_each(
    local_ray, tmp_path: Path, tiny_dataset: Path, tiny_model_dir: Path
) -> None:
    from raydr.validation.ledger import CLOSED, Ledger

    cfg, ckpt, pool = _one_validator(tmp_path, tiny_dataset, tiny_model_dir)
    # The one validator takes a's first checkpoint (its cold start keeps it busy) while a's
    # next two and b's one queue; then the scheduler stops a.
    assert ray.get(pool.submit.remote("a", 1, ckpt))
    assert all(ray.get([pool.submit.remote(t, s, ckpt) for t, s in [("a", 4), ("a", 8), ("b", 4)]]))
    deadline = time.time() + 30
    while ray.get(pool.inflight.remote()) != [("a", 1)] and time.time() < deadline:
        time.sleep(0.005)
    assert ray.get(pool.cancel.remote("a", "stopped by the test")) == 2
    # A checkpoint that raced the stop is closed at intake.
    assert ray.get(pool.submit.remote("a", 12, ckpt)) is False
    _wait(pool)
    rows = Ledger.for_run(cfg).rows()
    closing: dict[tuple, list[str]] = {}
    for r in rows:
        if r["status"] in CLOSED:
            closing.setdefault((r["trial"], r["step"]), []).append(r["status"])
    # Exactly one closing row per checkpoint: the one being validated finished.
    assert closing == {
        ("a", 1): ["done"],
        ("a", 4): ["cancelled"],
        ("a", 8): ["cancelled"],
        ("a", 12): ["cancelled"],
        ("b", 4): ["done"],
    }
    assert {r["error"] for r in rows if r["status"] == "cancelled"} == {"stopped by the test"}
    assert not Ledger.for_run(cfg).pending() and ray.get(pool.owed.remote("a")) == 0
    ray.kill(pool)


def test_the_pool_answers_a_thousand_submits_without_reading_its_ledger_again(
    local_ray, tmp_path: Path, tiny_dataset: Path, tiny_model_dir: Path
) -> None:
    from raydr.validation.ledger import Ledger
    from raydr.validation.pool import start_pool

    cfg = _cfg(tmp_path, tiny_dataset, tiny_model_dir, num_actors=1)
    Ledger.for_run(cfg).append({"trial": "old", "step": 1, "checkpoint": "c", "status": "pending"})
    pool = start_pool(cfg, retain=False)
    # A stopped trial's checkpoints are closed at intake: each submit looks the key up,
    # appends a pending and a cancelled row, and wakes the long polls, with no validation.
    ray.get(pool.cancel.remote("x", "stopped by the test"))
    ray.get(pool.cancel.remote("old", "stopped by the test"))  # the owed row from the file
    for step in range(1, 1001):
        assert ray.get(pool.submit.remote("x", step, f"/nowhere/{step}")) is False
    assert ray.get(pool.ledger_reads.remote()) == 1
    rows = Ledger.for_run(cfg).state()
    assert sum(r["status"] == "cancelled" for (t, _), r in rows.items() if t == "x") == 1000
    ray.kill(pool)


def test_a_courier_delivers_each_done_row_once_in_step_order_then_stops_cleanly(
    local_ray, tmp_path: Path, tiny_dataset: Path, tiny_model_dir: Path
) -> None:
    import queue

    from raydr.tuning.courier import Courier
    from raydr.validation.ledger import Ledger

    cfg, ckpt, pool = _one_validator(tmp_path, tiny_dataset, tiny_model_dir)
    channel: queue.Queue = queue.Queue()  # stands in for Tune's session queue: a real queue
    courier = Courier(pool, "t", ["nDCG@10"], channel)
    courier.start()
    for step in (4, 8):
        assert ray.get(pool.submit.remote("t", step, ckpt))
    ray.get(pool.heartbeat.remote("t", 9))
    # Training is over at step 10; drain until nothing is owed, then stop. The thread has
    # ended by the time it is joined (seen crash: a `_stop` attribute shadowing Thread's).
    courier.drain(10, owed=lambda: ray.get(pool.owed.remote("t")), poll_s=0.2)
    assert not courier.is_alive()
    reports = []
    while not channel.empty():
        reports.append(channel.get_nowait())
    assert [r["validated_step"] for r in reports] == [4, 8]
    # Each carries its checkpoint's validated metric, as the ledger's done row holds it.
    done = {r["step"]: r["metrics"]["nDCG@10"] for r in Ledger.for_run(cfg).results("t")}
    assert [r["nDCG@10"] for r in reports] == [done[4], done[8]], (reports, done)
    assert all(r["step"] >= 9 for r in reports)
    ray.kill(pool)


def test_actor_killed_mid_validation_is_redone_exactly_once(
    local_ray, tmp_path: Path, tiny_dataset: Path, tiny_model_dir: Path
) -> None:
    from raydr.validation.ledger import Ledger

    full = {"strategy": "full"}
    cfg, ckpt, pool = _one_validator(tmp_path, tiny_dataset, tiny_model_dir, 5, sampling=full)
    (actor,) = ray.get(pool.actor_handles.remote())
    ray.get(actor.warm.remote())
    ray.get(pool.submit.remote("t", 5, str(ckpt)))
    deadline = time.time() + 30
    while not ray.get(pool.inflight.remote()) and time.time() < deadline:
        time.sleep(0.005)
    ray.kill(actor, no_restart=False)  # a real process kill; Ray restarts the actor
    _wait(pool)
    rows = [r for r in Ledger.for_run(cfg).rows() if r["status"] != "pending"]
    assert len(rows) == 1 and rows[0]["status"] == "done"
    assert rows[0]["attempts"] == 2  # the killed attempt, then the re-do
    # Submitting the same checkpoint again is refused: exactly once.
    assert ray.get(pool.submit.remote("t", 5, str(ckpt))) is False
    ray.kill(pool)


def test_a_checkpoint_scattered_over_the_pool_gets_one_row_and_one_validators_metric(
    local_ray, tmp_path: Path, tiny_dataset: Path, tiny_model_dir: Path
) -> None:
    from raydr.validation.ledger import Ledger
    from raydr.validation.pool import start_pool
    from raydr.validation.validator import validate_on_full_corpus

    # Full strategy, two validators: shards=auto cuts each checkpoint in two.
    cfg = _cfg(tmp_path, tiny_dataset, tiny_model_dir, sampling={"strategy": "full"})
    assert cfg.validation.resolved_shards() == 2
    ckpts = {s: str(write_checkpoint(tmp_path / "ckpts", tiny_model_dir, s, cfg)) for s in (5, 6)}
    pool = start_pool(cfg)
    actors = ray.get(pool.actor_handles.remote())
    assert ray.get([a.warm.remote() for a in actors]) == [0, 0]  # queries only
    ray.get(pool.submit.remote("t", 5, ckpts[5]))
    deadline = time.time() + 30
    while not ray.get(pool.inflight.remote()) and time.time() < deadline:
        time.sleep(0.005)
    ray.kill(actors[0], no_restart=False)  # a real process kill mid-shard
    ray.get(pool.submit.remote("t", 6, ckpts[6]))
    _wait(pool)
    closing = sorted(
        (r for r in Ledger.for_run(cfg).rows() if r["status"] != "pending"), key=lambda r: r["step"]
    )
    assert [(r["step"], r["status"]) for r in closing] == [(5, "done"), (6, "done")]
    killed, calm = (r["metrics"] for r in closing)
    # The killed shard alone was run again; the other ran once.
    assert killed["shards"] == 2 and sorted(killed["shard_runs"]) == [1, 2], killed
    assert calm["shard_runs"] == [1, 1] and closing[0]["attempts"] == 2
    assert ray.get(pool.dispatched.remote()) == 2 + 1 + 2  # nothing else was run again
    for row in closing:
        whole = validate_on_full_corpus(cfg, ckpts[row["step"]], row["step"], 1)
        assert row["metrics"]["subset_size"] == whole["subset_size"] == 40
        for name in cfg.eval.metrics:
            assert row["metrics"][name] == pytest.approx(whole[name], abs=1e-4), name
    # Neither validator ever loaded the corpus: each read its shard's passages by position.
    assert ray.get([a.holds_corpus.remote() for a in actors]) == [False, False]
    ray.kill(pool)


def test_a_wait_that_times_out_names_the_checkpoints_still_owed(
    local_ray, tmp_path: Path, tiny_dataset: Path, tiny_model_dir: Path
) -> None:
    from raydr.validation.pool import wait_idle

    _, ckpt, pool = _one_validator(tmp_path, tiny_dataset, tiny_model_dir, 7)
    ray.get(pool.submit.remote("t", 7, str(ckpt)))
    with pytest.raises(RaydrError, match=r"did not finish within 0\.01 s; still owed: t step 7"):
        wait_idle(pool, timeout_s=0.01, poll_s=0.005)
    _wait(pool)  # it is still validated: the timeout only stopped the waiting
    assert [r["step"] for r in ray.get(pool.results.remote("t"))] == [7]
    ray.kill(pool)


def test_unloadable_checkpoint_fails_with_reason_and_pool_keeps_serving(
    local_ray, tmp_path: Path, tiny_dataset: Path, tiny_model_dir: Path
) -> None:
    from raydr.validation.ledger import Ledger
    from raydr.validation.pool import start_pool

    cfg = _cfg(tmp_path, tiny_dataset, tiny_model_dir)
    bad = write_checkpoint(tmp_path / "ckpts", tiny_model_dir, 1, cfg)
    weights = bad / "model.safetensors"
    weights.write_bytes(b"\0" * weights.stat().st_size)  # damaged, at its listed size
    short = write_checkpoint(tmp_path / "ckpts", tiny_model_dir, 3, cfg)
    (short / "model.safetensors").write_bytes(b"truncated")
    good = write_checkpoint(tmp_path / "ckpts", tiny_model_dir, 2, cfg)
    pool = start_pool(cfg)
    for step, ckpt in ((1, bad), (3, short), (2, good)):
        ray.get(pool.submit.remote("t", step, str(ckpt)))
    _wait(pool)
    state = Ledger.for_run(cfg).state()
    assert state[("t", 1)]["status"] == "failed"
    assert "cannot load" in state[("t", 1)]["error"] and str(bad) in state[("t", 1)]["error"]
    assert state[("t", 3)]["status"] == "failed"
    assert "incomplete checkpoint" in state[("t", 3)]["error"]
    assert "model.safetensors" in state[("t", 3)]["error"]
    assert state[("t", 2)]["status"] == "done"
    ray.kill(pool)


def test_ledger_survives_pool_restart_and_owed_work_is_done(
    local_ray, tmp_path: Path, tiny_dataset: Path, tiny_model_dir: Path
) -> None:
    from raydr.validation.ledger import Ledger
    from raydr.validation.pool import start_pool

    cfg = _cfg(tmp_path, tiny_dataset, tiny_model_dir)
    c1, c2 = (write_checkpoint(tmp_path / "ckpts", tiny_model_dir, s, cfg) for s in (1, 2))
    pool = start_pool(cfg)
    ray.get(pool.submit.remote("t", 1, str(c1)))
    _wait(pool)
    ray.kill(pool)
    ledger = Ledger.for_run(cfg)
    # Work taken in but not finished when the pool died, plus a torn line from the crash.
    ledger.append({"trial": "t", "step": 2, "checkpoint": str(c2), "status": "pending"})
    with open(ledger.path, "a") as fh:
        fh.write('{"trial": "t", "st')
    pool = start_pool(cfg)  # a new pool process over the same ledger
    assert ray.get(pool.submit.remote("t", 1, str(c1))) is False  # already validated
    _wait(pool)
    rows = ray.get(pool.results.remote("t"))
    assert [r["step"] for r in rows] == [1, 2]
    ray.kill(pool)


def test_a_ledger_write_that_fails_leaves_the_pool_serving_and_the_checkpoint_owed(
    local_ray, tmp_path: Path, tiny_dataset: Path, tiny_model_dir: Path
) -> None:
    from raydr.validation.ledger import Ledger
    from raydr.validation.pool import start_pool

    cfg = _cfg(tmp_path, tiny_dataset, tiny_model_dir, num_actors=1)
    ckpt = write_checkpoint(tmp_path / "ckpts", tiny_model_dir, 7, cfg)
    ledger = Ledger.for_run(cfg)
    pool = start_pool(cfg)
    assert ray.get(pool.submit.remote("t", 7, str(ckpt)))  # the pending row is written
    # The ledger becomes unwritable while the (cold) validator works: the done row and the
    # failed row both hit an OSError, outside any validator (not an actor death).
    aside = ledger.path.with_suffix(".aside")
    ledger.path.rename(aside)
    ledger.path.mkdir()
    try:
        _wait(pool)  # not stuck: the task ends, its slot is freed
        assert ray.get(pool.inflight.remote()) == []
    finally:
        ledger.path.rmdir()
        aside.rename(ledger.path)
    # Nothing was recorded, so the checkpoint is still owed, not silently dropped ...
    assert [(r["step"], r["status"]) for r in ledger.rows()] == [(7, "pending")]
    assert ray.get(pool.owed.remote("t")) == 1
    ray.kill(pool)
    # ... and a restarted pool does it: one closing row.
    pool = start_pool(cfg)
    _wait(pool)
    closing = [r for r in ledger.rows() if r["status"] != "pending"]
    assert [(r["step"], r["status"]) for r in closing] == [(7, "done")]
    ray.kill(pool)


def _dies_once(cfg, path, split, passages, lo, hi, threads, limit=True):
    """``shard_top`` in a process that dies the first time it runs the shard at ``lo`` = 0
    (before it answers); each run leaves a mark, so the test can count them."""
    import os

    from raydr.validation.scatter import shard_top

    marks = Path(cfg.output_dir) / "shard-runs"
    marks.mkdir(parents=True, exist_ok=True)
    runs = len(list(marks.glob(f"{lo}-*")))
    (marks / f"{lo}-{runs}").touch()
    if lo == 0 and runs == 0:
        os._exit(1)  # a real process death mid-shard
    return shard_top(cfg, path, split, passages, lo, hi, threads, limit)


def test_a_full_corpus_metric_scattered_over_shards_equals_one_validators(
    local_ray, tmp_path: Path, tiny_dataset: Path, tiny_model_dir: Path
) -> None:
    from ray import cloudpickle

    from raydr.validation.scatter import full_corpus_metrics, gather, scatter
    from raydr.validation.validator import validate_on_full_corpus

    cloudpickle.register_pickle_by_value(__import__(__name__))
    cfg = _cfg(tmp_path, tiny_dataset, tiny_model_dir, num_actors=1, num_cpus=1)
    ckpt = str(write_checkpoint(tmp_path / "ckpts", tiny_model_dir, 5, cfg))
    whole = validate_on_full_corpus(cfg, ckpt, 5, 1)
    for shards in (1, 2, 3):
        got = full_corpus_metrics(cfg, ckpt, 5, shards)
        assert got["shards"] == shards and got["subset_size"] == whole["subset_size"] == 40
        for name in cfg.eval.metrics:
            assert got[name] == pytest.approx(whole[name], abs=1e-4), (shards, name)
    # A shard whose process dies mid-way is run again, alone; the metric is unchanged.
    got = gather(cfg, scatter(cfg, ckpt, 3, task=_dies_once), 5)
    runs = sorted(p.name for p in (tmp_path / "runs" / "shard-runs").iterdir())
    assert [r.split("-")[1] for r in runs if r.startswith("0-")] == ["0", "1"]
    assert len([r for r in runs if not r.startswith("0-")]) == 2  # the others, once each
    for name in cfg.eval.metrics:
        assert got[name] == pytest.approx(whole[name], abs=1e-4)
    # A checkpoint that cannot be loaded is one error naming it, not a Ray traceback.
    with pytest.raises(RaydrError, match="nowhere"):
        full_corpus_metrics(cfg, str(tmp_path / "nowhere"), 5, 2)
    # The final evaluation (`raydr train`'s test score) scatters too, over every query.
    from raydr.evaluate import evaluate

    alone, spread = evaluate(cfg, ckpt, progress=False), evaluate(cfg, ckpt, False, shards=2)
    assert spread.info["shards"] == 2 and spread.info["num_queries"] == alone.info["num_queries"]
    for name in cfg.eval.metrics:
        assert spread.metrics[name] == pytest.approx(alone.metrics[name], abs=1e-4)


def test_bad_validation_input(
    local_ray, tmp_path: Path, tiny_dataset: Path, tiny_model_dir: Path
) -> None:
    from raydr.validation.pool import check_resources
    from raydr.validation.sampling import check_queries, prepare_subset

    with pytest.raises(
        RaydrError,
        match=r"validation: 1 × \{GPU: 2\} needs 2 GPU, but the cluster has 1; set validation\.num_gpus=0",
    ):
        check_resources(_cfg(tmp_path, tiny_dataset, tiny_model_dir, num_gpus=2))
    with pytest.raises(
        RaydrError, match=r"sampling\.size=500 is larger than the corpus allows: 40 docs"
    ):
        prepare_subset(
            _cfg(
                tmp_path, tiny_dataset, tiny_model_dir, sampling={"strategy": "random", "size": 500}
            )
        )
    with pytest.raises(RaydrError, match="no query has a relevant judged doc in the corpus subset"):
        check_queries({"q0": {"bio-0": 1}}, ["astro-1", "geo-2"], "test")
