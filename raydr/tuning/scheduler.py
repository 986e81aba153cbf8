"""The scheduler side of a search, in the driver: what stops trials, where its rungs fall, and how
late its decisions come.

The scheduler's time attribute is the *validated* step, so a decision needs a metric, and a
metric comes after its checkpoint. Two things shape how late: when the metric reaches the
scheduler (``tune.metric_delivery``, see ``courier``) and whether a trial waits for it at a rung
(``tune.rung_wait``). ``LagWatch`` says so once when decisions come more than a checkpoint
interval late.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from ray.tune import Callback
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


class LagWatch(Callback):
    """Warns once per search when a checkpoint's metric reaches the scheduler more than one
    checkpoint interval after the checkpoint: the scheduler then decides on stale evidence, and
    trials it stops have trained on for nothing."""

    def __init__(self, checkpoint_every: int, rung_wait: str) -> None:
        self.every = checkpoint_every
        self.rung_wait = rung_wait
        self.seen: dict[str, int] = {}  # trial → newest validated step delivered
        self.warned = False

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        validated = result.get(VALIDATED_STEP)
        if validated is None or validated <= self.seen.get(trial.trial_id, -1):
            return  # no metric, or one the scheduler has already seen
        self.seen[trial.trial_id] = validated
        lag = int(result.get("step", validated)) - int(validated)
        if lag <= self.every or self.warned:
            return
        self.warned = True
        waited = result.get("validation_wait_s")
        log.warning(
            "slow decisions: the metric of trial %s's step-%d checkpoint reached the scheduler "
            "at step %d, %d steps later, more than one checkpoint interval (%d steps)%s. Trials "
            "it stops train on meanwhile. Remedies: more validators (validation.num_actors), a "
            "smaller subset (validation.sampling.size), a longer interval "
            "(training.checkpoint_every)%s",
            trial.trial_id,
            validated,
            validated + lag,
            lag,
            self.every,
            f"; that validation took {waited:.0f} s from intake" if waited is not None else "",
            "" if self.rung_wait != "none" else ", or tune.rung_wait=until_validated",
        )


# Ray's internal key-value store, where trials leave their Train run's id for the driver.
_KV = "raydr-train-runs"


class CancelStopped(Callback):
    """``tune.stopped_checkpoints=cancel``: when the scheduler stops a trial, the pool cancels
    its queued checkpoints, since no decision will read their metrics and live trials' rung
    checkpoints would wait behind them. A trial that ended on its own (its last report says
    ``trial_complete``) has nothing queued: it waited for its validations before returning."""

    def __init__(self, pool: str) -> None:
        self.pool = pool

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        if (trial.last_result or {}).get("trial_complete"):
            return
        import ray

        from raydr.validation.pool import NAMESPACE

        try:
            handle = ray.get_actor(self.pool, namespace=NAMESPACE)
        except ValueError:  # no pool: nothing is queued anywhere
            return
        handle.cancel.remote(trial.trial_id, "its trial was stopped by the scheduler")


def _run_key(search: str, trial: str) -> str:
    return f"{search}/{trial}"


def remember_run(search: str, trial: str, run_id: str) -> None:
    """Called in the trial: which Train run is this trial's (for ``ReleaseStopped``)."""
    from ray.experimental import internal_kv

    internal_kv._internal_kv_put(_run_key(search, trial), run_id, namespace=_KV)


class ReleaseStopped(Callback):
    """When a trial ends, its Train run's request for nodes is withdrawn at once.

    A trial the scheduler stops is killed with its Train controller, which never withdraws the
    request it made to Ray's autoscaling coordinator; on an autoscaling cluster the trial's
    nodes would stay up about 200 s more (see ``raydr.training.trainer.release_nodes``). Done
    for every trial: with this callback taken out, even the trials that finished kept their
    nodes (tests/integration/test_autoscaling_ray.py); withdrawing twice is harmless."""

    def __init__(self, search: str) -> None:
        self.search = search

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._release(trial)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._release(trial)

    def _release(self, trial) -> None:
        from ray.experimental import internal_kv

        from raydr.training.trainer import release_nodes

        key = _run_key(self.search, trial.trial_id)
        run_id = internal_kv._internal_kv_get(key, namespace=_KV)
        if run_id is None:
            return
        try:
            release_nodes(run_id.decode())
        except Exception as exc:  # the nodes come back anyway when the request expires
            log.warning("trial %s: could not withdraw its request for nodes (%s)", trial, exc)
        internal_kv._internal_kv_del(key, namespace=_KV)
