"""Ray's own autoscaler (v2, fake node provider) serving raydr: a cluster shaped like
`cluster/aws.yaml` in small (a CPU head, a training and a validator node type, both
`min_workers: 0`) grows for a run and shrinks after it; a request no node type can hold, or
validators pinned to a node type that does not exist, fail in one line instead of hanging."""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

import pytest
import ray
from conftest import Whole, merged, record_node_and_world, record_to_step, starts, tiny_job

from raydr import config
from raydr.errors import RaydrError
from raydr.testing.fake_cluster import FakeAutoscalingCluster, NodeSampler, node_counts, node_type

pytestmark = [pytest.mark.ray, pytest.mark.autoscaler]

# cluster/aws.yaml in small: 1-CPU "8-GPU" training nodes, validator nodes with one GPU that
# two 0.25-GPU validators share (logical GPUs: nothing here uses CUDA).
TYPES = {
    "train_gpu": node_type({"CPU": 1, "train_node": 1}, max_workers=3),
    "val_gpu": node_type({"CPU": 1, "GPU": 1, "val_node": 1}, max_workers=1),
}
IDLE_TIMEOUT_S = 3.0


@contextlib.contextmanager
def _cluster(idle_timeout_s: float = IDLE_TIMEOUT_S):
    os.environ["RAY_AUTH_MODE"] = "disabled"  # the head runs without token auth
    # Workers on the fake nodes import the loop wrappers from this module and conftest.
    here = Path(__file__).resolve().parent
    path = os.pathsep.join([str(here), str(here.parent), os.environ.get("PYTHONPATH", "")])
    cluster = FakeAutoscalingCluster(
        TYPES, idle_timeout_s=idle_timeout_s, env={"PYTHONPATH": path}
    ).start()
    try:
        yield cluster
    except BaseException:
        print(cluster.log_tail())  # its temp dir is about to go
        raise
    finally:
        ray.shutdown()
        cluster.stop()


@pytest.fixture
def fake_cluster():
    with _cluster() as cluster:
        yield cluster


def _cfg(tmp_path: Path, dataset: Path, model: Path, negatives: Path, address: str, **over):
    tree = tiny_job(
        "autoscaled",
        tmp_path,
        dataset,
        model,
        negatives,
        training={"resources_per_worker": {"CPU": 1, "train_node": 1}},
        validation={"num_actors": 2, "num_cpus": 0.5, "resources": {"val_node": 0.25}},
        ray={"address": address, "infeasible_after_s": 5},
    )
    return config.RaydrConfig.model_validate(merged(tree, over))


def _wait_for_zero_workers(timeout_s: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        counts = node_counts(TYPES)
        if counts["train_gpu"] == 0 and counts["val_gpu"] == 0:
            return time.monotonic() - start
        time.sleep(0.5)
    raise AssertionError(f"worker nodes still up after {timeout_s} s: {node_counts(TYPES)}")


def test_a_run_scales_its_node_types_up_from_zero_and_back_down(
    fake_cluster, tmp_path: Path, tiny_dataset: Path, tiny_model_dir: Path, negatives: Path
) -> None:
    from ray.util.state import list_actors, list_placement_groups

    from raydr.launch import train

    cfg = _cfg(tmp_path, tiny_dataset, tiny_model_dir, negatives, fake_cluster.address)
    ray.init(address=fake_cluster.address, logging_level="ERROR", log_to_driver=False)
    assert node_counts(TYPES) == {"train_gpu": 0, "val_gpu": 0, "head": 1}
    with NodeSampler(TYPES) as up:
        result, done = train(cfg, loop=record_node_and_world)
    ended = time.monotonic()
    assert result.error is None
    # 1. The autoscaler started two training nodes for the trainer's placement group and one
    # validator node for the pool, and nothing else.
    assert up.peak("train_gpu") == 2 and up.peak("val_gpu") == 1, up.samples[-1]
    # Kinds as the sampler saw them while the nodes were up: a training node may already be
    # scaled down by now (its workers finished while validation went on).
    kinds = up.kinds
    workers = {s["node"] for s in starts(tmp_path)}
    assert len(workers) == 2 and {kinds.get(n) for n in workers} == {"train_gpu"}
    at = fake_cluster.address  # the State API's address discovery may find other Rays
    validators = list_actors(address=at, filters=[("class_name", "=", "Validator")], detail=True)
    assert len(validators) == 2
    assert {kinds.get(a.node_id) for a in validators} == {
        "val_gpu"
    }  # both share one validator node
    # Every checkpoint was validated.
    steps = result.metrics["step"]
    assert sorted(r["step"] for r in done) == list(range(1, steps + 1))
    # 2. Scale-down: the worker nodes go within the idle timeout (plus a few autoscaler rounds),
    # with no raydr actor or placement group left holding them.
    down = _wait_for_zero_workers(timeout_s=IDLE_TIMEOUT_S + 30)
    alive = list_actors(address=at, filters=[("state", "=", "ALIVE")], detail=True)
    assert not [a for a in alive if a.class_name in ("ValidationPool", "Validator")]
    assert not [p for p in list_placement_groups(address=at, detail=True) if p.state != "REMOVED"]
    print(
        f"\nscale-up: train_gpu x2 at {up.first('train_gpu', 2):.1f} s, val_gpu x1 at "
        f"{up.first('val_gpu'):.1f} s; run {ended - up.t0:.1f} s; scale-down {down:.1f} s "
        f"after the run (idle timeout {IDLE_TIMEOUT_S:g} s)"
    )


@pytest.mark.parametrize(
    ("over", "field"),
    [
        # The largest training node has 1 CPU (as the largest AWS type has 8 GPUs).
        ({"training": {"resources_per_worker": Whole({"CPU": 4, "train_node": 1})}}, "training"),
        # The example: more GPUs per worker than any node has (on a cluster, workers
        # asked for GPUs train on GPU whatever the driver's node has).
        ({"training": {"resources_per_worker": Whole({"GPU": 16, "train_node": 1})}}, "training"),
        # The README's old name for the validator type: no node type offers it.
        ({"validation": {"resources": Whole({"validator_node": 0.25})}}, "validation"),
    ],
    ids=["oversized-worker", "16-gpu-worker", "no-such-validator-type"],
)
def test_requests_no_node_type_can_hold_fail_in_one_line(
    fake_cluster,
    tmp_path: Path,
    tiny_dataset: Path,
    tiny_model_dir: Path,
    negatives: Path,
    over: dict,
    field: str,
) -> None:
    from ray.util.state import list_placement_groups

    from raydr.training.trainer import prepare
    from raydr.validation.pool import demand

    cfg = _cfg(tmp_path, tiny_dataset, tiny_model_dir, negatives, fake_cluster.address, **over)
    start = time.monotonic()
    with pytest.raises(RaydrError, match=rf"^{field}.*cannot be placed.*no node type") as err:
        prepare(cfg, also=[demand(cfg)])
    took = time.monotonic() - start
    assert took < 60, took
    print(f"\n{field}: failed after {took:.1f} s: {err.value}")
    # The probe is gone; the feasible half of the request may have started a node, which the
    # autoscaler gives back.
    groups = list_placement_groups(address=fake_cluster.address, detail=True)
    assert not [p for p in groups if p.state != "REMOVED"]
    _wait_for_zero_workers(timeout_s=IDLE_TIMEOUT_S + 30)


def test_a_search_grows_and_shrinks_the_training_nodes_with_its_trials(
    tmp_path: Path, tiny_dataset: Path, tiny_model_dir: Path, negatives: Path
) -> None:
    """3. `raydr bench autoscale` on a 3-trial ASHA search: a training node per running trial,
    each given back when its trial ends, stopped ones included (Train does not withdraw a
    stopped trial's request for nodes; raydr does, or they would stay up ~200 s more)."""
    import yaml
    from conftest import tiny_search_tree

    from raydr.cli import main

    tree = tiny_search_tree("tiny-autoscale", tmp_path, tiny_dataset, tiny_model_dir, negatives)
    # Two learning trials and a frozen one, all at once, each pausing at its rungs (4, 8, 16)
    # until ASHA has decided: the frozen one is stopped at the first rung it does not reach first.
    tree["tune"]["space"] = {"training.lr": {"grid": [3e-3, 1e-3, 1e-9]}}
    tree["tune"]["rung_wait"] = "until_validated"
    del tree["ray"]  # the benchmark's fake cluster
    job = tmp_path / "search.yaml"
    job.write_text(yaml.safe_dump(tree))
    out = tmp_path / "autoscale.json"
    argv = ["bench", "autoscale", str(job), "--idle-timeout-s", str(IDLE_TIMEOUT_S)]
    assert main([*argv, "--every", "0.5", "--out", str(out)]) == 0
    payload = json.loads(out.read_text())
    trials = payload["trials"]
    assert len(trials) == 3 and not any(t["error"] for t in trials)
    by_lr = {t["config"]["training.lr"]: t for t in trials}
    assert by_lr[1e-9]["stopped_early"] and by_lr[1e-9]["steps_run"] < 20, trials
    # Grew: a training node per running trial (at least two at once), one validator node.
    assert payload["peak_nodes"]["val_gpu"] == 1
    assert payload["peak_nodes"]["train_gpu"] >= 2
    assert payload["peak_nodes"]["train_gpu"] == payload["peak_train_workers"]
    # Shrank: each time Train workers went, their nodes followed within the idle timeout plus
    # a few autoscaler rounds, during the search and after it; nothing was left.
    assert payload["release_lag_s"] and max(payload["release_lag_s"]) < IDLE_TIMEOUT_S + 20
    assert payload["scale_down_s"] < IDLE_TIMEOUT_S + 20
    assert payload["left_over"] == {
        "raydr_and_train_actors": 0,
        "placement_groups": 0,
        "worker_nodes": 0,
    }
    assert 0 < payload["node_seconds_ratio"] < 1
    assert out.with_suffix(".png").is_file()


def _grow_loop(loop_config: dict) -> None:
    """At world size 1: two steps (checkpointed), then wait for Ray to replace the group with a
    bigger one; at 2: train on from that checkpoint to the end."""
    import ray.train

    if ray.train.get_context().get_world_size() > 1:
        record_node_and_world(loop_config)
        return
    record_to_step(loop_config, 2)
    time.sleep(180)
    raise RuntimeError("the run did not grow within 180 s")


def test_an_elastic_run_starts_on_one_node_and_grows_when_the_autoscaler_adds_one(
    tmp_path: Path, tiny_dataset: Path, tiny_model_dir: Path, negatives: Path
) -> None:
    """4. `num_workers: [1, 2]` from zero training nodes: raydr waits for the first node only
    and starts; Train asks for two, the autoscaler adds the second, and the run grows."""
    from raydr.launch import train

    # A longer idle timeout: the first node must not go idle between raydr's check and the
    # trainer's start (both nodes would then come up together and there is nothing to grow).
    with _cluster(idle_timeout_s=10.0) as cluster:
        cfg = _cfg(
            tmp_path,
            tiny_dataset,
            tiny_model_dir,
            negatives,
            cluster.address,
            training={
                "num_workers": (1, 2),
                "resize_interval_s": 1.0,
                "epochs": 50,
                "max_steps": 4,
            },
            validation={"enabled": False},
        )
        ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
        with NodeSampler(TYPES) as seen:
            result, _ = train(cfg, loop=_grow_loop)
        assert result.error is None and result.metrics["step"] == 4
        first, *grown = starts(tmp_path)
        assert first["world"] == 1 and [s["world"] for s in grown] == [2, 2]
        assert {seen.kinds.get(s["node"]) for s in (first, *grown)} == {"train_gpu"}
        assert len({s["node"] for s in grown}) == 2
        took = min(s["t"] for s in grown) - first["t"]
        down = _wait_for_zero_workers(timeout_s=10.0 + 30)
        print(
            f"\nelastic: 1 train_gpu at {seen.first('train_gpu'):.1f} s, 2 at "
            f"{seen.first('train_gpu', 2):.1f} s; grew to 2 workers {took:.1f} s after the "
            f"first started; scale-down {down:.1f} s"
        )
