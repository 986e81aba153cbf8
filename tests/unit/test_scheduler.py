"""The scheduler side of a search: where ASHA's rungs fall, the decision lag, the slow-decision
warning, and the config rules of ``tune.rung_wait``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

from raydr import config
from raydr.errors import RaydrError


def _cfg(tmp_path: Path, every: int, **scheduler) -> config.RaydrConfig:
    return config.build(
        {
            "data": {"path": str(tmp_path)},
            "training": {"checkpoint_every": every},
            "tune": {"scheduler": {"type": "asha", **scheduler}},
        },
        "t",
    )


@pytest.mark.parametrize(
    ("grace", "rf", "max_t", "total", "every", "rungs"),
    [
        (18, 2, None, 36, 9, (18,)),  # jobs/scifact-tune.yaml
        (4, 2, None, 20, 4, (4, 8, 16)),
        (5, 2, None, 20, 4, (8, 12)),  # rungs 5 and 10 fall between checkpoints; 20 is the end
        (3, 3, 100, 60, 10, (10, 30)),  # max_t beyond training: rung 81 never comes
        (2, 1.5, None, 12, 2, (2, 4, 6, 8)),  # rungs 2, 3, 4.5, 6.75, 10.125
    ],
)
def test_rung_checkpoints_follow_ashas_own_rungs(
    tmp_path: Path, grace, rf, max_t, total, every, rungs
) -> None:
    from ray.tune.schedulers import ASHAScheduler

    from raydr.tuning.scheduler import asha_milestones, rung_checkpoints

    cfg = _cfg(tmp_path, every, grace_period=grace, reduction_factor=rf, max_t=max_t)
    asha = ASHAScheduler(
        time_attr="validated_step",
        metric="m",
        mode="max",
        max_t=max_t or total,
        grace_period=grace,
        reduction_factor=rf,
    )
    # Ray keeps its rungs private; this holds our copy of the rule to Ray's.
    theirs = sorted(milestone for milestone, _ in asha._brackets[0]._rungs)
    assert asha_milestones(cfg, total) == pytest.approx(theirs)
    assert rung_checkpoints(cfg, total) == rungs


def test_rung_wait_needs_asha_and_metric_delivery_is_gone(tmp_path: Path) -> None:
    base = {"data": {"path": str(tmp_path)}}
    with pytest.raises(RaydrError, match=r"tune.*rung_wait=until_validated waits at ASHA's rungs"):
        config.build(
            {**base, "tune": {"rung_wait": "until_validated", "scheduler": {"type": "median"}}},
            "job.yaml",
        )
    # One path for a metric (the courier): the old delivery switch is refused by name.
    with pytest.raises(RaydrError, match=r"job\.yaml: invalid config: tune\.metric_delivery"):
        config.build({**base, "tune": {"metric_delivery": "at_checkpoint"}}, "job.yaml")
    with pytest.raises(RaydrError, match=r"tune\.rung_wait.*'none' or 'until_validated'"):
        config.build({**base, "tune": {"rung_wait": "always"}}, "job.yaml")
    ok = config.build({**base, "tune": {"rung_wait": "until_validated"}}, "job.yaml")
    assert ok.tune.rung_wait == "until_validated"


def test_decision_lag_is_steps_past_the_rung_when_its_metric_arrived() -> None:
    from raydr.tuning.summary import decision_lags

    # (training step of the report, validated step it carried)
    received = [(8, 4), (12, 4), (16, 8), (20, 16)]
    assert decision_lags(received, (8, 16), stopped_at=None) == {8: 8, 16: 4}
    # A rung skipped by a later metric is decided on that one, when it comes.
    assert decision_lags([(12, 4), (20, 12)], (8,), None) == {8: 12}
    # A stopped trial ran on after the report that stopped it, until the stop landed.
    assert decision_lags([(17, 8)], (8, 16), stopped_at=18) == {8: 10}
    assert decision_lags([], (8, 16), stopped_at=3) == {}


def test_lag_watch_warns_once_with_the_figures(caplog) -> None:
    from raydr.tuning.callbacks import LagWatch

    watch = LagWatch(checkpoint_every=9, rung_wait="none")
    a, b = SimpleNamespace(trial_id="a"), SimpleNamespace(trial_id="b")
    with caplog.at_level(logging.WARNING, logger="raydr.tuning.scheduler"):
        watch.on_trial_result(0, [], a, {"step": 9})  # no metric yet
        watch.on_trial_result(1, [], a, {"step": 18, "validated_step": 9})  # one interval: fine
        watch.on_trial_result(2, [], a, {"step": 27, "validated_step": 9})  # the same metric again
        assert not caplog.records
        watch.on_trial_result(
            3, [], b, {"step": 36, "validated_step": 18, "validation_wait_s": 95.2}
        )
        watch.on_trial_result(4, [], a, {"step": 36, "validated_step": 18})
    assert len(caplog.records) == 1, "said once per search"
    message = caplog.records[0].getMessage()
    for part in (
        "trial b's step-18 checkpoint reached the scheduler at step 36, 18 steps later",
        "one checkpoint interval (9 steps)",
        "took 95 s",
        "validation.num_actors",
        "validation.sampling.size",
        "training.checkpoint_every",
        "tune.rung_wait=until_validated",
    ):
        assert part in message, (part, message)


def test_bench_stopping_refuses_unknown_policies(tmp_path: Path) -> None:
    from raydr.bench.stopping import add_arguments, main

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([str(tmp_path / "job.yaml"), "--policies", "on_landing,sometimes"])
    with pytest.raises(RaydrError, match=r"--policies: unknown \['sometimes'\]; expected some of"):
        main(args)
