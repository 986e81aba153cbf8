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
from typing import Any

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from raydr.config import RaydrConfig
from raydr.validation.ledger import VALIDATED_STEP

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


class ReleasingASHA(ASHAScheduler):
    """ASHA that tells the pool when it lets a trial go on, so a trial paused at a rung
    (``tune.rung_wait=until_validated``) resumes only once it is known not to be stopped."""

    def __init__(self, pool: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._pool_name = pool
        self._pool = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_pool": None}  # Tune pickles its scheduler with the search

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
    """The configured scheduler, on the validated step."""
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
    )
    if cfg.tune.rung_wait == "until_validated":
        return ReleasingASHA(pool, **kwargs)
    return ASHAScheduler(**kwargs)
