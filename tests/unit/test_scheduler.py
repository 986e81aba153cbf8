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


def _search_cfg(tmp_path: Path, rung_wait: str = "none", **scheduler) -> config.RaydrConfig:
    tune = {"mode": "min", "rung_wait": rung_wait, "scheduler": scheduler}
    return config.build({"data": {"path": str(tmp_path)}, "tune": tune}, "t")


@pytest.mark.parametrize("rung_wait", ["none", "until_validated"])
@pytest.mark.parametrize(("max_t", "rungs"), [(None, [5, 15, 45]), (20, [5, 15])])
def test_build_scheduler_hands_asha_every_configured_field(
    tmp_path: Path, rung_wait: str, max_t: int | None, rungs: list[int]
) -> None:
    """Pins each of ``tune.scheduler``'s fields reaching ASHA, with and without the releasing
    subclass: a dropped keyword falls back to Ray's default (reduction_factor 4, grace_period
    1, max_t 100, time_attr training_iteration) without a word. None of these values is a
    default, so each assertion fails when its keyword goes missing."""
    from ray.tune.schedulers import ASHAScheduler

    from raydr.tuning.scheduler import ReleasingASHA, build_scheduler

    cfg = _search_cfg(tmp_path, rung_wait, grace_period=5, reduction_factor=3, max_t=max_t)
    asha = build_scheduler(cfg, "nDCG@10", total_steps=50, pool="pool-t")
    assert type(asha) is (ReleasingASHA if rung_wait == "until_validated" else ASHAScheduler)
    assert asha._reduction_factor == 3 and asha._max_t == (max_t or 50)
    assert (asha._time_attr, asha._metric, asha._mode) == ("validated_step", "nDCG@10", "min")
    # The rungs are where grace_period and reduction_factor act: grace · rf^k below max_t.
    assert sorted(milestone for milestone, _ in asha._brackets[0]._rungs) == rungs
    assert asha._brackets[0].rf == 3  # the cutoff quantile: the best 1/rf go on
    if rung_wait == "until_validated":
        assert asha._pool_name == "pool-t"


def test_build_scheduler_median_and_none(tmp_path: Path) -> None:
    """Pins ``scheduler.type`` choosing the class: none runs every trial to the end (plain
    FIFO, not an ASHA, which subclasses it), median stops on the validated step."""
    from ray.tune.schedulers import FIFOScheduler, MedianStoppingRule

    from raydr.tuning.scheduler import build_scheduler

    fifo = build_scheduler(_search_cfg(tmp_path, type="none"), "m", 50, "p")
    assert type(fifo) is FIFOScheduler
    median = build_scheduler(_search_cfg(tmp_path, type="median", grace_period=7), "m", 50, "p")
    assert type(median) is MedianStoppingRule
    assert (median._time_attr, median._metric, median._mode) == ("validated_step", "m", "min")
    assert median._grace_period == 7


@pytest.mark.ray
def test_pool_stopped_tells_the_pool_of_stopped_trials_only() -> None:
    """Pins how ``PoolStopped`` tells the two apart: a trial whose closing report says
    ``trial_complete`` ended on its own and keeps its queued checkpoints (the pool hears
    nothing); one the scheduler stopped is reported, as ``cancel`` or ``stopped`` by the policy.
    The pool is a real named actor in raydr's namespace that records what it is told."""
    import ray
    from ray.tune.experiment import Trial

    from raydr.tuning.callbacks import PoolStopped
    from raydr.validation.pool import NAMESPACE

    if ray.is_initialized():
        pytest.skip("needs a Ray of its own")

    @ray.remote(num_cpus=0)
    class Told:
        def __init__(self) -> None:
            self.heard: list[tuple] = []

        def cancel(self, trial: str, why: str) -> None:
            self.heard.append(("cancel", trial))

        def stopped(self, trial: str) -> None:
            self.heard.append(("stopped", trial))

        def said(self) -> list[tuple]:
            return self.heard

    ray.init(address="local", num_cpus=1, object_store_memory=80_000_000, include_dashboard=False)
    try:
        pool = Told.options(name="pool-t", namespace=NAMESPACE).remote()
        completed = Trial("__fake", stub=True, trial_id="done")
        completed.update_last_result({"trial_complete": 1, "step": 20, "validated_step": 20})
        stopped = Trial("__fake", stub=True, trial_id="cut")
        stopped.update_last_result({"step": 9, "validated_step": 8})
        for cancel in (True, False):
            callback = PoolStopped("pool-t", cancel=cancel)
            callback.on_trial_complete(0, [completed, stopped], completed)
            callback.on_trial_complete(1, [completed, stopped], stopped)
        assert ray.get(pool.said.remote()) == [("cancel", "cut"), ("stopped", "cut")]
        # No pool (a search without validation): nothing to tell, and no error.
        PoolStopped("no-such-pool", cancel=True).on_trial_complete(2, [stopped], stopped)
    finally:
        ray.shutdown()
