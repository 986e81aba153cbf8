"""Multi-node behaviour on Ray's simulated clusters (ray.cluster_utils.Cluster): each "node" is
a real raylet with its own resources, all on this machine. Checked: trainers and fractional-GPU
validators land on their node types; losing a worker node resumes from the latest checkpoint on
the nodes left; an elastic run starts at its minimum and grows when a node joins."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import ray
from conftest import Whole, record_node_and_world, record_to_step, starts, tiny_job

from raydr import config

pytestmark = pytest.mark.ray

MiB = 1024**2
ONE_PER_TRAIN_NODE = {"CPU": 1, "train_node": 1}  # training.resources_per_worker


@pytest.fixture
def cluster():
    import conftest
    from ray import cloudpickle
    from ray.cluster_utils import Cluster

    # Workers cannot import the tests' modules: the loop wrappers travel by value.
    cloudpickle.register_pickle_by_value(conftest)
    cloudpickle.register_pickle_by_value(sys.modules[__name__])

    # The head holds the driver and the validation pool (which writes the ledger locally).
    c = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "object_store_memory": 80 * MiB},
    )
    yield c
    ray.shutdown()
    c.shutdown()


def _add_train_node(c, **extra):
    # GPUs here too (logical): validators must still not take them.
    return c.add_node(
        num_cpus=2, num_gpus=2, resources={"train_node": 2}, object_store_memory=80 * MiB, **extra
    )


def _cfg(tmp_path: Path, dataset: Path, model: Path, negatives: Path, validation=None, **training):
    """The tiny job, a worker per train_node, up to 3 failures; validation off unless
    ``validation`` says more."""
    tree = tiny_job(
        "multinode",
        tmp_path,
        dataset,
        model,
        negatives,
        training={
            "max_failures": 3,
            "resources_per_worker": ONE_PER_TRAIN_NODE,
            "keep": {"best": None},  # every checkpoint stays: the tests read each one's report
            **training,
        },
        validation=validation or Whole({"enabled": False}),
    )
    return config.build(tree, "test")


def test_trainers_and_fractional_gpu_validators_land_on_their_node_types(
    cluster, caplog, tmp_path: Path, tiny_dataset: Path, tiny_model_dir: Path, negatives: Path
) -> None:
    from ray import cloudpickle

    from raydr.launch import train

    cloudpickle.register_pickle_by_value(__import__(__name__))
    first = _add_train_node(cluster)
    validators = cluster.add_node(
        num_cpus=1, num_gpus=1, resources={"validator_node": 4}, object_store_memory=80 * MiB
    )
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    cfg = _cfg(
        tmp_path,
        tiny_dataset,
        tiny_model_dir,
        negatives,
        validation={"num_actors": 2, "resources": {"validator_node": 1}},
        epochs=3,
        num_workers=2,
    )
    with caplog.at_level(logging.WARNING, logger="raydr.training.trainer"):
        result, rows = train(cfg, loop=record_node_and_world)

    assert "is a local path on a 3-node cluster" in caplog.text  # no shared storage: warned
    assert result.error is None and result.metrics["step"] == 3
    assert {s["node"] for s in starts(tmp_path)} == {first.node_id}  # trainers: train node only
    done = [r for r in rows if r["status"] == "done"]
    assert {r["step"] for r in done} == {r["step"] for r in rows} and 3 in {r["step"] for r in done}
    # Validators hold 0.25 GPU each, on the validator node, though the train nodes have GPUs.
    assert {r["metrics"]["node_id"] for r in done} == {validators.node_id}


def _two_phase_loop(loop_config: dict) -> None:
    """Our loop, as a long run seen in two phases. The first worker group trains to step 2
    (checkpointed), then idles the way a long run would until Ray replaces the group (node
    lost, or elastic resize); every later group trains to the configured max_steps, resuming
    from that checkpoint."""
    import ray.train

    marker = Path(loop_config["ctx"].storage).parent / "phase1-done"
    if marker.exists():
        record_node_and_world(loop_config)
        return
    record_to_step(loop_config, 2)
    if ray.train.get_context().get_world_rank() == 0:
        marker.write_text("")
    time.sleep(240)
    raise RuntimeError("Ray did not replace the first worker group within 240 s")


def _train_in_thread(cfg):
    from raydr.launch import train

    out: dict = {}

    def run() -> None:
        try:
            out["result"], _ = train(cfg, loop=_two_phase_loop)
        except BaseException as exc:  # surfaced by the test below
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def _wait_until(ready: Callable[[], bool], timeout: float, failure: str) -> None:
    """Poll ``ready`` every 0.5 s; fail with ``failure`` once ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert time.monotonic() < deadline, failure
        time.sleep(0.5)


def _wait_for(path: Path, thread: threading.Thread, out: dict, timeout: float = 240) -> None:
    def ready() -> bool:
        if path.exists():
            return True
        assert thread.is_alive(), f"training ended before {path.name}: {out}"
        return False

    _wait_until(ready, timeout, f"no {path.name} within {timeout} s")


def _wait_committed(tmp_path: Path, step: int, timeout: float = 60) -> None:
    """Until Ray Train has committed the step's checkpoint (a report is asynchronous: a node lost
    right after it may leave the previous checkpoint as the latest)."""
    from raydr.training.checkpoint import dir_name

    snapshot = tmp_path / "storage" / "multinode" / "checkpoint_manager_snapshot.json"

    def committed() -> bool:
        if not snapshot.exists():
            return False
        latest = json.loads(snapshot.read_text()).get("latest_checkpoint_result") or {}
        return latest.get("checkpoint_dir_name") == dir_name(step)

    failure = f"Ray did not commit the step-{step} checkpoint within {timeout} s"
    _wait_until(committed, timeout, failure)


def _add_single_train_node(c):
    return c.add_node(num_cpus=1, resources={"train_node": 1}, object_store_memory=80 * MiB)


def _run_to_phase_two(cluster, tmp_path, dataset, model, negatives, **training):
    """Start the two-phase run, elastic from 1 to 2 workers, in a thread; return once its
    step-2 checkpoint is committed."""
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    cfg = _cfg(
        tmp_path,
        dataset,
        model,
        negatives,
        epochs=50,
        max_steps=4,
        num_workers=(1, 2),
        resize_interval_s=1.0,
        **training,
    )
    thread, out = _train_in_thread(cfg)
    _wait_for(tmp_path / "phase1-done", thread, out)
    _wait_committed(tmp_path, 2)
    return thread, out


def _finished_from_step_2(thread: threading.Thread, out: dict):
    thread.join(timeout=300)
    assert not thread.is_alive() and "error" not in out, out
    result = out["result"]
    assert result.error is None and result.metrics["step"] == 4
    assert result.metrics["resumed_from_step"] == 2  # from the checkpoint, not from scratch


def test_elastic_training_starts_at_min_and_grows_when_a_node_joins(
    cluster, tmp_path: Path, tiny_dataset: Path, tiny_model_dir: Path, negatives: Path
) -> None:
    _add_single_train_node(cluster)
    thread, out = _run_to_phase_two(cluster, tmp_path, tiny_dataset, tiny_model_dir, negatives)
    assert [s["world"] for s in starts(tmp_path)] == [1]  # only one node can hold a worker
    joined = _add_single_train_node(cluster)  # like the autoscaler bringing a node up

    _finished_from_step_2(thread, out)
    grown = starts(tmp_path)[1:]
    assert [s["world"] for s in grown] == [2, 2]
    assert joined.node_id in {s["node"] for s in grown}


def test_losing_a_node_resumes_on_the_nodes_left_with_as_many_negatives(
    cluster, tmp_path: Path, tiny_dataset: Path, tiny_model_dir: Path, negatives: Path
) -> None:
    nodes = [_add_single_train_node(cluster) for _ in range(2)]
    # Bank of one step's passages at 2 workers (2 x batch 2 x group 2 = 8); held: at 1 worker
    # the bank adds the 4 passages the missing worker would have brought.
    bank = {"size": 8, "warmup_steps": 0, "hold_negatives": True}
    thread, out = _run_to_phase_two(
        cluster, tmp_path, tiny_dataset, tiny_model_dir, negatives, memory_bank=bank
    )
    first = starts(tmp_path)
    assert [s["world"] for s in first] == [2, 2]
    lost = next(n for n in nodes if n.node_id == next(s for s in first if s["rank"] == 1)["node"])
    cluster.remove_node(lost)  # like a preempted spot instance; no spare: one worker goes on

    _finished_from_step_2(thread, out)
    second = starts(tmp_path)[2:]
    assert [s["world"] for s in second] == [1]
    assert lost.node_id not in {s["node"] for s in second}
    reports = {m["step"]: m for _, m in out["result"].best_checkpoints}
    seen = [(s, reports[s]["world_size"], reports[s]["negatives_per_query"]) for s in (2, 3, 4)]
    # Step 1 had an empty bank; from step 2 on, 2*2*2 - 1 + 8 = 15 at two workers and
    # 1*2*2 - 1 + 12 = 15 at one.
    assert seen == [(2, 2, 15), (3, 1, 15), (4, 1, 15)], seen
