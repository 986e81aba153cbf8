"""Dynamic negatives on a real local Ray: the pool refreshes and Nyström-corrects the mining
index from checkpoints, one encode serving validation too; workers take the newest index
without ever waiting for it; a refresh whose actor dies is redone."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest
import ray
from conftest import tiny_job, write_checkpoint

from raydr import config
from raydr.data import store
from raydr.mining.dynamic import refresh

pytestmark = pytest.mark.ray

DELAYS: Path | None = None  # JSON {"refresh": s, "any": s}: how long validator jobs sleep first


def _slow_validators() -> None:
    """Ray worker setup hook: slow ``Validator.stream`` down as the test's delay file says
    ("any": before a job starts; "refresh": between a refresh's validation and its index).
    Fault injection: the encoder and index code stay real."""
    import json
    import time as _time

    from raydr.validation.validator import Validator

    if getattr(Validator.stream, "slowed", False):
        return
    real, delays = Validator.stream, DELAYS

    def stream(self, path, step, mine=None, *args, **kwargs):
        wait = json.loads(delays.read_text())
        _time.sleep(wait.get("any", 0))
        parts = real(self, path, step, mine, *args, **kwargs)
        yield next(parts)
        _time.sleep(wait.get("refresh", 0) if mine == "refresh" else 0)
        yield next(parts)

    stream.slowed = True
    Validator.stream = stream


def _delay(**seconds: float) -> None:
    DELAYS.write_text(__import__("json").dumps(seconds))


@pytest.fixture(scope="module")
def slow_ray(tmp_path_factory):
    global DELAYS
    DELAYS = tmp_path_factory.mktemp("delays") / "delays.json"
    _delay()
    # The hook travels by value (with DELAYS): workers cannot import this test module.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(
        num_cpus=2,
        num_gpus=1,
        object_store_memory=150 * 1024**2,
        include_dashboard=False,
        runtime_env={"worker_process_setup_hook": _slow_validators},
    )
    yield
    ray.shutdown()


def _tree(tmp_path: Path, dataset: Path, model: Path, **mining) -> dict:
    """The tiny job on dynamic negatives: 40 steps of one worker, a checkpoint every 10."""
    return tiny_job(
        f"dyn-{tmp_path.name}",
        tmp_path,
        dataset,
        model,
        training={
            "group_size": 3,
            "batch_size": 1,
            "epochs": 8,
            "checkpoint_every": 10,
            "num_workers": 1,
            "warmup_ratio": 0.0,
            "mining": {
                "source": "dynamic",
                "refresh_every": 20,
                "landmarks": 8,
                "depth": 6,
                "poll_s": 0.1,
                **mining,
            },
        },
        validation={"sampling": {"strategy": "random", "size": 10, "seed": 3}},
    )


def _cfg(tree: dict) -> config.RaydrConfig:
    return config.build(tree, "test").with_absolute_paths()


def _published(pool, trial: str, cfg, have: int = -1):
    settings = cfg.training.mining
    return ray.get(pool.published.remote(trial, have, settings, cfg.model.name))


def _wait_index(pool, trial: str, cfg, step: int, timeout: float = 120.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        answer = _published(pool, trial, cfg, step - 1)
        if answer is not None and answer[0] >= step:
            snap = ray.get(answer[1])
            assert snap.step == answer[0]  # the pair is one publication, never a mix
            return snap
        time.sleep(0.05)
    raise AssertionError(f"no index of step {step} within {timeout} s")


def test_refresh_and_nystrom_share_the_validation_encode_and_publish_atomically(
    slow_ray, tmp_path: Path, tiny_dataset: Path, tiny_model_dir: Path
) -> None:
    from raydr.validation.client import PoolNegatives
    from raydr.validation.ledger import Ledger
    from raydr.validation.pool import start_pool, wait_idle
    from raydr.validation.sampling import read_subset, subset_path
    from raydr.validation.validator import Validator

    _delay(any=1.0)
    cfg = _cfg(_tree(tmp_path, tiny_dataset, tiny_model_dir))
    pool = start_pool(cfg)
    ray.get([a.warm.remote() for a in ray.get(pool.actor_handles.remote())])
    assert _published(pool, "t", cfg) is None  # registers the trial: initial index queued
    first = _wait_index(pool, "t", cfg, 0)
    assert (first.kind, first.step, first.n_docs) == ("refresh", 0, 40)

    ckpts = {s: write_checkpoint(tmp_path / "ckpts", tiny_model_dir, s, cfg) for s in (10, 20)}
    ray.get(pool.submit.remote("t", 10, str(ckpts[10])))  # 10 < refresh_every: Nyström
    nystrom = _wait_index(pool, "t", cfg, 10)
    assert (nystrom.kind, nystrom.base_step) == ("nystrom", 0)
    ray.get(pool.submit.remote("t", 20, str(ckpts[20])))  # 20 steps on: a full refresh
    refreshed = _wait_index(pool, "t", cfg, 20)
    assert (refreshed.kind, refreshed.base_step) == ("refresh", 20)
    assert wait_idle(pool, timeout_s=120, poll_s=0.1)

    done = {r["step"]: r for r in Ledger.for_run(cfg).results("t")}
    subset = done[10]["metrics"]["subset_size"]
    # One encode per checkpoint: the refresh's corpus encode served validation too ...
    assert done[20]["metrics"]["passages_encoded"] == 40
    assert done[20]["metrics"]["mining_kind"] == "refresh"
    # ... and the Nyström landmarks came from the validation subset: no extra passages.
    assert done[10]["metrics"]["passages_encoded"] == subset
    assert done[10]["metrics"]["mining_landmarks"] == 8
    # The shared encode scores exactly what a plain validation of the checkpoint scores.
    alone = Validator(cfg.with_absolute_paths(), read_subset(subset_path(cfg)))
    plain = alone.validate(str(ckpts[20]), 20)
    for name in cfg.eval.metrics:
        assert done[20]["metrics"][name] == pytest.approx(plain[name], abs=1e-6)

    # A worker's view: polls return at once, the index arrives on a later poll.
    source = PoolNegatives.for_run(cfg, _pool_name(cfg), "t")
    t0 = time.perf_counter()
    while source._index is None:
        source.poll()
        time.sleep(0.01)
        assert time.perf_counter() - t0 < 30
    assert source.describe(25)["index_step"] == 20
    assert source.describe(25)["staleness_steps"] == 5
    passages = store.PassageStore(store.ensure(tiny_dataset, "test", None).passages)
    judged = set(passages.positions(["bio-0", "bio-1"]).tolist())
    drawn = source.draw("q0", judged, 2, np.random.default_rng(0))
    assert len(set(drawn)) == 2 and not set(drawn) & judged
    # The fp16 index travels with no doc ids (positions in the training data's order), and a
    # worker's searchable view is Ray's read-only buffer, not a copy of it.
    assert source._index.snapshot.doc_emb.dtype == np.float16
    ref = _published(pool, "t", cfg)[1]
    readers = [_Reader.remote() for _ in range(2)]
    assert all(not w for _, w, _ in ray.get([r.read.remote([ref]) for r in readers]))
    # One copy per node: an index past Ray's inline size (100 KB) is one object-store file
    # that the workers of a node map, read-only (this one: 4,000 x 384 fp16, 3 MB).
    rng = np.random.default_rng(0)
    big = refresh(0, rng.normal(size=(4000, 384)), ["q0"], rng.normal(size=(1, 384)), 16)
    big_ref = ray.put(big)
    seen = ray.get([r.read.remote([big_ref]) for r in readers])
    assert len({pid for pid, _, _ in seen}) == 2, "the two readers were one process"
    assert all(not writeable for _, writeable, _ in seen), "a reader holds a private copy"
    assert len({shared for _, _, shared in seen}) == 1 and "plasma" in seen[0][2]
    for reader in readers:
        ray.kill(reader)
    ray.get(pool.close.remote())
    ray.kill(pool)
    # Losing the pool does not stop training: polls keep the index held.
    for _ in range(3):
        source._asked_at = -1e18  # ask now
        source.poll()
        time.sleep(0.2)
    assert source.describe(30)["index_step"] == 20


@ray.remote(num_cpus=0)
class _Reader:
    """A process that reads a published index as a training worker does."""

    def read(self, refs: list) -> tuple[int, bool, str]:
        """(pid, whether the index's doc embeddings are writeable, the file mapped under
        them): what ``PoolNegatives`` makes of a published snapshot."""
        import os

        from raydr.mining.dynamic import NegativeIndex
        from raydr.testing.memory import mapped_file

        emb = NegativeIndex(ray.get(refs[0])).snapshot.doc_emb
        return os.getpid(), emb.flags.writeable, mapped_file(emb.ctypes.data)


def _pool_name(cfg) -> str:
    from raydr.validation.pool import pool_name

    return pool_name(cfg.name)


def test_a_slow_refresh_never_slows_training_and_every_checkpoint_is_still_validated(
    slow_ray, tmp_path: Path, tiny_dataset: Path, tiny_model_dir: Path
) -> None:
    from raydr.launch import train

    refresh_s = 15.0
    _delay(refresh=refresh_s)  # the initial index and the step-40 refresh
    tree = _tree(tmp_path, tiny_dataset, tiny_model_dir, refresh_every=40)
    tree["validation"]["num_actors"] = 2  # the two slow refreshes run side by side
    cfg = _cfg(tree)
    result, done = train(cfg)
    m = result.metrics
    assert m["step"] == 40
    # Had a step waited for any refresh, the loop would have taken at least refresh_s.
    assert m["elapsed_s"] < refresh_s
    assert m["negatives_source"] == "fallback" and m["index_step"] == -1  # none had landed
    kinds = {r["step"]: r["metrics"].get("mining_kind") for r in done}
    # Before the initial index lands a checkpoint is only validated (nothing to correct yet).
    assert set(kinds) == {10, 20, 30, 40} and kinds[40] == "refresh"
    assert {kinds[s] for s in (10, 20, 30)} <= {"nystrom", None}
    assert all(r["status"] == "done" for r in done)


def test_training_draws_from_the_published_index_and_reports_its_staleness(
    slow_ray, tmp_path: Path, tiny_dataset: Path, tiny_model_dir: Path
) -> None:
    from raydr.launch import train
    from raydr.training.loop import train_loop_per_worker

    _delay()
    cfg = _cfg(_tree(tmp_path, tiny_dataset, tiny_model_dir, sampling="softmax"))
    name = _pool_name(cfg)

    def after_the_first_index(loop_config):
        # Test orchestration: start stepping only once the initial index is out, so the run
        # is certain to train on dynamic negatives.
        ctx = loop_config["ctx"]
        handle = ray.get_actor(name, namespace="raydr")
        settings = ctx.cfg.training.mining
        deadline = time.time() + 120
        while (
            ray.get(handle.published.remote(ctx.cfg.name, -1, settings, ctx.cfg.model.name)) is None
        ):
            assert time.time() < deadline, "no initial index"
            time.sleep(0.1)
        train_loop_per_worker(loop_config)

    result, done = train(cfg, loop=after_the_first_index)
    m = result.metrics
    assert m["negatives_source"] == "dynamic"
    assert m["index_step"] in {0, 10, 20, 30}  # published before the last step
    assert m["staleness_steps"] == 40 - m["index_step"]
    # The configured sampler drew them: softmax over the index, never its top-k.
    assert m["dynamic_draws_softmax"] > 0 and m["dynamic_draws_topk"] == 0, m
    assert len(done) == 4


def test_a_refresh_whose_actor_dies_is_redone_and_the_previous_index_serves_meanwhile(
    slow_ray, tmp_path: Path, tiny_dataset: Path, tiny_model_dir: Path
) -> None:
    from raydr.validation.ledger import Ledger
    from raydr.validation.pool import start_pool, wait_idle

    _delay()
    cfg = _cfg(_tree(tmp_path, tiny_dataset, tiny_model_dir))
    pool = start_pool(cfg)
    (actor,) = ray.get(pool.actor_handles.remote())
    ray.get(actor.warm.remote())
    _published(pool, "t", cfg)
    assert _wait_index(pool, "t", cfg, 0).step == 0
    _delay(refresh=5.0)  # between the step-20 refresh's validation and its index
    ckpt = write_checkpoint(tmp_path / "ckpts", tiny_model_dir, 20, cfg)
    ray.get(pool.submit.remote("t", 20, str(ckpt)))
    ledger = Ledger.for_run(cfg)
    deadline = time.time() + 60
    while not ledger.results("t"):
        assert time.time() < deadline, "no validation row"
        time.sleep(0.02)
    # The metric landed before the corpus encode finished: validation never waits for mining.
    assert _published(pool, "t", cfg)[0] == 0
    ray.kill(actor, no_restart=False)  # a real process kill mid-refresh; Ray restarts it
    # While the refresh is redone, workers keep getting the previous index.
    for _ in range(10):
        answer = _published(pool, "t", cfg)
        assert answer is not None and answer[0] == 0
        time.sleep(0.1)
    assert wait_idle(pool, timeout_s=120, poll_s=0.1)
    snap = _wait_index(pool, "t", cfg, 20)
    assert (snap.kind, snap.base_step) == ("refresh", 20)
    (row,) = ledger.results("t")  # still exactly one closing row: the redo only mined
    assert row["status"] == "done" and row["attempts"] == 1
    assert row["metrics"]["mining_kind"] == "refresh"
    ray.kill(pool)


def test_a_checkpoint_before_the_first_index_is_validated_without_a_second_refresh(
    slow_ray, tmp_path: Path, tiny_dataset: Path, tiny_model_dir: Path
) -> None:
    from raydr.validation.ledger import Ledger
    from raydr.validation.pool import start_pool, wait_idle

    _delay(refresh=5.0)  # the initial index is slow; a second actor takes the checkpoint
    tree = _tree(tmp_path, tiny_dataset, tiny_model_dir)
    tree["validation"]["num_actors"] = 2
    cfg = _cfg(tree)
    pool = start_pool(cfg)
    ray.get([a.warm.remote() for a in ray.get(pool.actor_handles.remote())])
    _published(pool, "t", cfg)
    ckpt = write_checkpoint(tmp_path / "ckpts", tiny_model_dir, 10, cfg)
    ray.get(pool.submit.remote("t", 10, str(ckpt)))  # Nyström planned, but no base yet
    assert wait_idle(pool, timeout_s=120, poll_s=0.1)
    (row,) = Ledger.for_run(cfg).results("t")
    assert "mining_kind" not in row["metrics"]  # validated only: the refresh was not doubled
    assert row["metrics"]["passages_encoded"] == row["metrics"]["subset_size"]
    assert _wait_index(pool, "t", cfg, 0).kind == "refresh"
    ray.kill(pool)


def test_a_refresh_scattered_over_the_pool_builds_the_index_one_validator_would(
    slow_ray, tmp_path: Path, tiny_dataset: Path, tiny_model_dir: Path
) -> None:
    from raydr.validation.ledger import Ledger
    from raydr.validation.pool import start_pool, wait_idle
    from raydr.validation.validator import Validator

    _delay()
    # Full strategy, two validators: checkpoints and full refreshes are cut in two.
    tree = _tree(tmp_path, tiny_dataset, tiny_model_dir)
    tree["validation"] = {**tree["validation"], "num_actors": 2, "sampling": {"strategy": "full"}}
    cfg = _cfg(tree)
    pool = start_pool(cfg)
    ray.get([a.warm.remote() for a in ray.get(pool.actor_handles.remote())])
    assert _published(pool, "t", cfg) is None  # the initial index: two shards, then assembled
    first = _wait_index(pool, "t", cfg, 0)
    alone = Validator(cfg, None)
    _, whole = alone.work(
        cfg.model.name, 0, mine="refresh", mining=cfg.training.mining, validate=False
    )
    assert (first.kind, first.n_docs, first.doc_emb.dtype) == ("refresh", 40, whole.doc_emb.dtype)
    np.testing.assert_allclose(first.doc_emb, whole.doc_emb, atol=2e-3)  # fp16, other batches
    np.testing.assert_allclose(first.query_emb, whole.query_emb, atol=2e-3)
    assert first.query_ids == whole.query_ids

    ckpt = write_checkpoint(tmp_path / "ckpts", tiny_model_dir, 20, cfg)
    ray.get(pool.submit.remote("t", 20, str(ckpt)))  # 20 steps on: a full refresh, scattered
    refreshed = _wait_index(pool, "t", cfg, 20)
    assert (refreshed.kind, refreshed.base_step) == ("refresh", 20)
    assert wait_idle(pool, timeout_s=120, poll_s=0.1)
    (row,) = Ledger.for_run(cfg).results("t")
    m = row["metrics"]
    assert (m["shards"], m["mining_kind"], m["index_step"], m["passages_encoded"]) == (
        2,
        "refresh",
        20,
        40,  # one encode served validation and the index
    )
    plain = alone.validate(str(ckpt), 20)
    for name in cfg.eval.metrics:
        assert m[name] == pytest.approx(plain[name], abs=1e-4), name
    # Two refreshes of two shards and one assembly each: nothing else ran.
    assert ray.get(pool.dispatched.remote()) == 2 * (2 + 1)
    ray.kill(pool)
