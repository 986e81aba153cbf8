"""The search's Tune callbacks, in the driver: how late decisions come (``LagWatch``), and what a
trial the scheduler stops leaves behind: its checkpoints (``PoolStopped``) and its
nodes (``ReleaseStopped``, with ``remember_run``, which each trial calls, through Ray's internal
key-value store).
"""

from __future__ import annotations

import logging

from ray.tune import Callback

from raydr.validation.ledger import VALIDATED_STEP

log = logging.getLogger(__name__)


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


class PoolStopped(Callback):
    """When the scheduler stops a trial, tell the pool: the trial will never resume, so once its
    rows close it keeps only its best checkpoint (``training.keep``). Under
    ``tune.stopped_checkpoints=cancel`` the pool also cancels its queued checkpoints, since no
    decision will read their metrics and live trials' rung checkpoints would wait behind them.
    A trial that ended on its own (its last report says ``trial_complete``) is not stopped: it
    waited for its validations before returning, and keeps its newest too."""

    def __init__(self, pool: str, cancel: bool) -> None:
        self.pool, self.cancel = pool, cancel

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        if (trial.last_result or {}).get("trial_complete"):
            return
        import ray

        from raydr.validation.pool import NAMESPACE

        try:
            handle = ray.get_actor(self.pool, namespace=NAMESPACE)
        except ValueError:  # no pool: nothing is queued anywhere
            return
        if self.cancel:
            handle.cancel.remote(trial.trial_id, "its trial was stopped by the scheduler")
        else:
            handle.stopped.remote(trial.trial_id)


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
    nodes would stay up about 200 s more (see ``raydr.capacity.release_nodes``). Done
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

        from raydr.capacity import release_nodes

        key = _run_key(self.search, trial.trial_id)
        run_id = internal_kv._internal_kv_get(key, namespace=_KV)
        if run_id is None:
            return
        try:
            release_nodes(run_id.decode())
        except Exception as exc:  # the nodes come back anyway when the request expires
            log.warning("trial %s: could not withdraw its request for nodes (%s)", trial, exc)
        internal_kv._internal_kv_del(key, namespace=_KV)
