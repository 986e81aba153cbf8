"""One Tune trial: its config, a TorchTrainer reporting through Tune, then the last validations.

Each trial is a Tune function that builds its own TorchTrainer (Ray Train V2 cannot be handed to
a Tuner). All trials push checkpoints to one shared validation pool. A validated metric reaches
the scheduler by one path: the trial's courier hands it to Tune as the pool records it, with the
step it was measured on (the scheduler's time attribute). With ``tune.rung_wait=until_validated``
training pauses at each rung checkpoint until the scheduler has decided. After training the
courier drains the trial's last validations; a trial the scheduler stops still has its submitted
checkpoints validated, because the pool owns that work.
"""

from __future__ import annotations

from typing import Any

from raydr.config import RaydrConfig
from raydr.tuning.space import apply
from raydr.validation.ledger import report_metrics


def tune_trial(
    params: dict[str, Any],
    base: dict[str, Any],
    pool: str,
    rungs: tuple[int, ...] = (),
    hold: bool = False,
) -> None:
    """One trial: its config, a TorchTrainer reporting through Tune, then the last validations.
    ``base``: the search's resolved config as JSON, ``params`` the trial's sampled values;
    ``rungs``: the checkpoints the scheduler decides on (validated first); ``hold``: training
    waits at each until the scheduler has decided."""
    import ray
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from raydr.training.trainer import fit
    from raydr.tuning import courier as couriers
    from raydr.tuning.callbacks import remember_run
    from raydr.validation.client import PoolHook, PoolNegatives
    from raydr.validation.pool import NAMESPACE

    trial = tune.get_context().get_trial_id()
    tree = apply(base, params)
    # Each trial is its own Ray Train run, beside the others in the job's training storage.
    tree["name"] = f"{base['name']}-{trial}"
    cfg = RaydrConfig.model_validate(tree)  # the trial's own config, validated once, here
    handle = ray.get_actor(pool, namespace=NAMESPACE)
    metrics = list(cfg.eval.metrics)
    callback = TuneReportCallback()  # creates the session's channel the courier shares
    courier = couriers.start(handle, trial, metrics)
    hook = PoolHook(pool, trial, rungs, wait_at_rungs=hold)
    negatives = PoolNegatives.for_run(cfg, pool, trial)
    try:
        result = fit(
            cfg,
            hook=hook,
            callbacks=[callback],
            negatives=negatives,
            on_run=lambda run_id: remember_run(base["name"], trial, run_id),
        )
        if result.error:
            raise result.error
    except BaseException:
        courier.stop()
        raise
    # Training is over: the courier delivers the validations still running, so the scheduler
    # and the results see every checkpoint's metric.
    total = result.metrics["step"]
    courier.drain(total, owed=lambda: ray.get(handle.owed.remote(trial)))
    done = ray.get(handle.results.remote(trial))
    ray.get(handle.finished.remote(trial))  # never resumed: its best checkpoints are enough
    # The closing report: marks the trial complete (not stopped), restating its newest metric.
    tune.report(
        {
            "trial_complete": 1,
            "step": total,
            **(report_metrics(done[-1], metrics, total) if done else {}),
        }
    )
