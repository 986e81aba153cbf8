"""The arithmetic behind raydr's capacity check and the autoscale benchmark, without Ray; and
which way ``ensure`` turns on a shortfall, on a one-CPU local Ray."""

from __future__ import annotations

import pytest

from raydr.bench.autoscale import TRAIN, release_lags
from raydr.capacity import Demand, ensure, shortfall
from raydr.errors import RaydrError


def test_a_demand_drops_zero_amounts_and_names_what_the_cluster_lacks() -> None:
    d = Demand("validation", {"CPU": 0, "GPU": 0.25, "val_node": 0.25}, count=4)
    assert d.shape() == {"GPU": 0.25, "val_node": 0.25}  # a placement group refuses zeros
    assert d.describe() == "4 × {GPU: 0.25, val_node: 0.25}"
    assert shortfall(d, {"GPU": 1.0, "val_node": 1.0}) is None  # exactly enough
    assert shortfall(d, {"GPU": 1.0}) == (
        "4 × {GPU: 0.25, val_node: 0.25} needs 1 val_node, but the cluster has 0"
    )
    assert shortfall(Demand("x", {"CPU": 0}, count=3), {}) is None  # asks for nothing


def _s(t: float, nodes: int, workers: int) -> dict:
    return {"t": t, TRAIN: nodes, "workers": workers}


def test_release_lag_is_the_time_nodes_outlive_the_workers_that_needed_them() -> None:
    samples = [
        _s(0, 0, 0),
        _s(1, 3, 3),
        _s(2, 3, 2),  # a trial stopped: 3 nodes for 2 workers...
        _s(5, 2, 2),  # ...until 3 s later
        _s(6, 2, 0),  # both other trials ended at once
        _s(7, 1, 0),
        _s(9, 0, 0),  # 3 s later
    ]
    assert release_lags(samples) == [3, 3]
    # Nodes that never came down count the wait so far, so a test bounding the lag still fails.
    assert release_lags([_s(0, 2, 2), _s(1, 2, 1), _s(60, 2, 1)]) == [59]


def test_on_a_cluster_workers_asked_for_gpus_train_on_gpu_whatever_the_driver_has(
    monkeypatch,
) -> None:
    import pytest
    import torch

    from raydr.config import RaydrConfig
    from raydr.errors import RaydrError
    from raydr.training.trainer import use_gpu, worker_resources

    if torch.cuda.is_available():
        pytest.skip("decides for a driver without CUDA (a CPU head)")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)

    def cfg(address=None, use="auto", **per_worker):
        tree = {"training": {"use_gpu": use, "resources_per_worker": per_worker or {"CPU": 1}}}
        tree = {**tree, "data": {"path": "d"}, "ray": {"address": address}}
        return RaydrConfig.model_validate(tree)

    gpu = {"GPU": 1, "train_node": 1}
    assert not use_gpu(cfg(**gpu))  # a local Ray: its GPUs are logical, CUDA decides
    assert worker_resources(cfg(**gpu)) == {"train_node": 1}
    assert use_gpu(cfg("10.0.0.1:6379", **gpu))  # cluster/aws.yaml: the driver on a CPU head
    assert worker_resources(cfg("10.0.0.1:6379", **gpu)) == gpu
    assert not use_gpu(cfg("10.0.0.1:6379"))  # not asked for GPUs: CPU workers
    assert not use_gpu(cfg("10.0.0.1:6379", use="no", **gpu))
    with pytest.raises(RaydrError, match="use_gpu=yes, but torch sees no CUDA"):
        use_gpu(cfg(use="yes"))
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")  # inside `ray job submit`
    assert use_gpu(cfg(**gpu))


@pytest.mark.ray
def test_a_shortfall_is_refused_at_once_without_an_autoscaler_and_probed_with_one() -> None:
    """Pins ``ensure``'s branch on ``ray.autoscaler``: without one (``no``) a demand the
    cluster lacks is refused at once, naming its field; with one (``yes``) it goes to the probe
    placement group, which waits for nodes (here ``timeout_s=0``: one look, then the timeout's
    error). Inverted, a fixed cluster would wait ``ray.scale_up_timeout_s`` for nodes that never
    come, and an autoscaling one would refuse work its autoscaler could place."""
    import ray

    if ray.is_initialized():
        pytest.skip("needs a Ray of its own, sized to one CPU")
    ray.init(
        address="local",
        num_cpus=1,
        object_store_memory=80_000_000,
        include_dashboard=False,
        logging_level="ERROR",
        log_to_driver=False,
    )
    try:
        need = [Demand("training.num_workers", {"CPU": 1}, count=2, hint="fewer workers")]
        assert ensure([Demand("validation.num_actors", {"CPU": 1}, 1)], autoscaler="no") == {}
        with pytest.raises(RaydrError) as err:
            ensure(need, autoscaler="no", timeout_s=0, settle_s=0)
        assert str(err.value) == (
            "training.num_workers: 2 × {CPU: 1} needs 2 CPU, but the cluster has 1; "
            "fewer workers (or add nodes; an autoscaler would)"
        )
        with pytest.raises(RaydrError, match=r"^training\.num_workers: no nodes to hold it within"):
            ensure(need, autoscaler="yes", timeout_s=0, settle_s=60)
        assert ray.util.placement_group_table() and all(
            pg["state"] == "REMOVED" for pg in ray.util.placement_group_table().values()
        ), "the probe is removed"
    finally:
        ray.shutdown()
