"""The scheduler of a search, in the driver: what stops trials, and where its rungs fall.

The scheduler's time attribute is the *validated* step, so a decision needs a metric, and a
metric comes after its checkpoint: the trial's courier hands it over as soon as the pool records
it, and with ``tune.rung_wait=until_validated`` a trial waits at a rung for the decision. The
search's Tune callbacks (how late decisions come, what a stopped trial leaves behind) are in
``callbacks``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from raydr.config import RaydrConfig
from raydr.validation.ledger import VALIDATED_STEP, Ledger, ledger_path

log = logging.getLogger(__name__)


def asha_milestones(cfg: RaydrConfig, total_steps: int) -> list[float]:
    """ASHA's rungs in validated steps, ascending: ``grace · rf^k`` below ``max_t`` (the same
    rule as Ray's ``_Bracket`` with one bracket; a unit test holds the two together)."""
    s = cfg.tune.scheduler
    max_t = s.max_t or total_steps
    count = int(math.log(max_t / s.grace_period) / math.log(s.reduction_factor) + 1)
    return [s.grace_period * s.reduction_factor**k for k in range(count)]


def rung_checkpoints(cfg: RaydrConfig, total_steps: int) -> tuple[int, ...]:
    """The checkpoint steps whose metrics ASHA decides on: for each rung, the first checkpoint
    at or after it. The last step is left out: training is over there anyway."""
    every = cfg.training.checkpoint_every
    steps = {
        min(total_steps, math.ceil(m / every) * every) for m in asha_milestones(cfg, total_steps)
    }
    return tuple(sorted(s for s in steps if s < total_steps))


class LedgerASHA(ASHAScheduler):
    """ASHA whose rungs survive a resumed search.

    Tune restores a search with the scheduler it pickled when the search began, so its rungs
    come back empty, and trials that run after the resume would be judged against nothing.
    Tune then adds every trial it restores, and the ledger holds every validated metric: each
    trial added is replayed from its ledger rows, up to the last validated step it reported,
    into its bracket's rungs, in step order, as ``on_trial_result`` recorded them. A new
    search's trials have reported nothing yet."""

    def __init__(self, ledger: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._ledger_path = ledger
        self._ledger: Ledger | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_ledger": None}  # Tune pickles its scheduler with the search

    def on_trial_add(self, tune_controller, trial) -> None:
        super().on_trial_add(tune_controller, trial)
        if self._ledger is None:
            if not Path(self._ledger_path).is_file():
                return  # no checkpoint validated yet: nothing to replay
            self._ledger = Ledger(self._ledger_path)
        # Only what Tune had seen: a metric validated after the trial's last report reaches
        # the scheduler with the next one, and is decided on then.
        seen = (trial.last_result or {}).get(VALIDATED_STEP, -1)
        rows = [r for r in self._ledger.results(trial.trial_id) if r["step"] <= seen]
        recorded = self.replay(trial.trial_id, rows)
        if recorded:
            log.info(
                "ASHA: %d rung metric(s) of trial %s replayed from the ledger", recorded, trial
            )

    def replay(self, trial_id: str, rows: list) -> int:
        """Record one trial's done ``rows`` in its bracket's rungs; → how many landed in one."""
        from types import SimpleNamespace

        bracket, stub = self._trial_info[trial_id], SimpleNamespace(trial_id=trial_id)
        before = sum(len(rung) for _, rung in bracket._rungs)
        for row in sorted(rows, key=lambda r: r["step"]):
            value = row["metrics"].get(self._metric)
            if value is not None:
                bracket.on_result(stub, row["step"], self._metric_op * value)
        return sum(len(rung) for _, rung in bracket._rungs) - before


class ReleasingASHA(LedgerASHA):
    """ASHA that tells the pool when it lets a trial go on, so a trial paused at a rung
    (``tune.rung_wait=until_validated``) resumes only once it is known not to be stopped."""

    def __init__(self, pool: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._pool_name = pool
        self._pool = None

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "_pool": None}

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision == TrialScheduler.CONTINUE and VALIDATED_STEP in result:
            import ray

            from raydr.validation.pool import NAMESPACE

            try:
                if self._pool is None:
                    self._pool = ray.get_actor(self._pool_name, namespace=NAMESPACE)
                self._pool.release.remote(trial.trial_id, int(result[VALIDATED_STEP]))
            except ValueError:  # no pool: nobody is paused waiting for this
                pass
        return decision


def build_scheduler(cfg: RaydrConfig, metric: str, total_steps: int, pool: str):
    """The configured scheduler, on the validated step; ASHA's rungs are replayed from the
    run's ledger when a search resumes."""
    from ray.tune.schedulers import FIFOScheduler, MedianStoppingRule

    s = cfg.tune.scheduler
    if s.type == "none":
        return FIFOScheduler()
    if s.type == "median":
        return MedianStoppingRule(
            time_attr=VALIDATED_STEP, metric=metric, mode=cfg.tune.mode, grace_period=s.grace_period
        )
    kwargs = dict(
        time_attr=VALIDATED_STEP,
        metric=metric,
        mode=cfg.tune.mode,
        max_t=s.max_t or total_steps,
        grace_period=s.grace_period,
        reduction_factor=s.reduction_factor,
        ledger=str(ledger_path(cfg.with_absolute_paths())),
    )
    if cfg.tune.rung_wait == "until_validated":
        return ReleasingASHA(pool, **kwargs)
    return LedgerASHA(**kwargs)
