"""Multi-node behaviour on Ray's simulated clusters (ray.cluster_utils.Cluster): each "node" is
a real raylet with its own resources, all on this machine. Checked: trainers and fractional-GPU
validators land on their node types."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest
import ray
from conftest import tiny_tree

from raydr import config

pytestmark = pytest.mark.ray

MiB = 1024**2


@pytest.fixture
def cluster():
    from ray.cluster_utils import Cluster

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


def _record_node_and_world(loop_config: dict) -> None:
    """Our loop, after noting which node and world size each worker started with."""
    import os

    import ray.train

    from raydr.training.loop import train_loop_per_worker

    ctx = ray.train.get_context()
    out = Path(loop_config["storage"]).parent / "starts"
    out.mkdir(exist_ok=True)
    (out / f"{time.time_ns()}-{os.getpid()}.json").write_text(
        json.dumps(
            {
                "node": ray.get_runtime_context().get_node_id(),
                "rank": ctx.get_world_rank(),
                "world": ctx.get_world_size(),
            }
        )
    )
    train_loop_per_worker(loop_config)


def _starts(tmp_path: Path) -> list[dict]:
    files = sorted((tmp_path / "starts").glob("*.json"), key=lambda p: int(p.name.split("-")[0]))
    return [json.loads(p.read_text()) for p in files]


def _cfg(tmp_path: Path, dataset: Path, model: Path, negatives: Path, **training):
    tree = {
        **tiny_tree("multinode", tmp_path, dataset, model),
        "training": {
            "split": "test",
            "negatives": str(negatives),
            "group_size": 2,
            "batch_size": 2,
            "checkpoint_every": 1,
            "storage_path": str(tmp_path / "storage"),
            "max_failures": 3,
            **training,
        },
        "validation": {"enabled": False},
    }
    return config.build(tree, "test")


def test_trainers_and_fractional_gpu_validators_land_on_their_node_types(
    cluster, caplog, tmp_path: Path, tiny_dataset: Path, tiny_model_dir: Path, negatives: Path
) -> None:
    from ray import cloudpickle

    from raydr.training.trainer import train

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
        epochs=3,
        num_workers=2,
        resources_per_worker={"CPU": 1, "train_node": 1},
    )
    cfg = config.build(
        {
            **cfg.model_dump(mode="json"),
            "validation": {
                "num_actors": 2,
                "num_cpus": 0,
                "num_gpus": 0.25,
                "resources": {"validator_node": 1},
                "sampling": {"strategy": "full"},
            },
        },
        "test",
    )
    with caplog.at_level(logging.WARNING, logger="raydr.training.trainer"):
        result, rows = train(cfg, loop=_record_node_and_world)

    assert "is a local path on a 3-node cluster" in caplog.text  # no shared storage: warned
    assert result.error is None and result.metrics["step"] == 3
    assert {s["node"] for s in _starts(tmp_path)} == {first.node_id}  # trainers: train node only
    done = [r for r in rows if r["status"] == "done"]
    assert {r["step"] for r in done} == {r["step"] for r in rows} and 3 in {r["step"] for r in done}
    # Validators hold 0.25 GPU each, on the validator node, though the train nodes have GPUs.
    assert {r["metrics"]["node_id"] for r in done} == {validators.node_id}
