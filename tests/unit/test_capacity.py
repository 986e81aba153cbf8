"""The arithmetic behind raydr's capacity check and the autoscale benchmark, without Ray."""

from __future__ import annotations

from raydr.bench.autoscale import TRAIN, release_lags
from raydr.capacity import Demand, shortfall


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
