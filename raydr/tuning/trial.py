"""One Tune trial: its config, a TorchTrainer reporting through Tune, then the last validations.

Each trial is a Tune function that builds its own TorchTrainer (Ray Train V2 cannot be handed to
a Tuner). All trials push checkpoints to one shared validation pool. Validated metrics reach
the scheduler with the step they were measured on (its time attribute): as the pool records
them, through the trial's courier (``tune.metric_delivery=on_landing``), or in rank 0's next
checkpoint report (``at_checkpoint``). With ``tune.rung_wait=until_validated`` training pauses at
each rung checkpoint until the scheduler has decided. After training a trial keeps reporting
until its last checkpoints are validated; a trial the scheduler stops still has its submitted
checkpoints validated, because the pool owns that work.
"""

from __future__ import annotations

import time
from typing import Any

from raydr.config import RaydrConfig
from raydr.tuning.space import apply
from raydr.validation import ledger as rows
from raydr.validation.ledger import VALIDATED_STEP


def tune_trial(
    params: dict[str, Any],
    base: dict[str, Any],
    pool: str,
    rungs: tuple[int, ...] = (),
    hold: bool = False,
) -> None:
    """One trial: its config, a TorchTrainer reporting through Tune, then the last validations.
    ``rungs``: the checkpoints the scheduler decides on (validated first); ``hold``: training
    waits at each until the scheduler has decided."""
    import ray
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from raydr.training.trainer import fit
    from raydr.tuning import courier as couriers
    from raydr.tuning.scheduler import remember_run
    from raydr.validation.client import PoolHook, PoolNegatives
    from raydr.validation.pool import NAMESPACE

    trial = tune.get_context().get_trial_id()
    tree = apply(base, params)
    # Each trial is its own Ray Train run, beside the others in the job's training storage.
    tree["name"] = f"{base['name']}-{trial}"
    cfg = RaydrConfig.model_validate(tree)
    handle = ray.get_actor(pool, namespace=NAMESPACE)
    metrics = list(cfg.eval.metrics)
    callback = TuneReportCallback()  # creates the session's channel the courier shares
    courier = (
        couriers.start(handle, trial, metrics) if cfg.tune.metric_delivery == "on_landing" else None
    )
    # Pausing at a rung needs a courier to carry the metric while no reports are made.
    hook = PoolHook(pool, trial, metrics, rungs, wait_at_rungs=hold and courier is not None)
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
        if courier is not None:
            courier.stop()
        raise
    # Training is over; report the validations that were still running so the scheduler and
    # the results see every checkpoint's metric.
    total = result.metrics["step"]
    if courier is not None:
        courier.drain(total, owed=lambda: ray.get(handle.owed.remote(trial)))
    else:
        seen = result.metrics.get(VALIDATED_STEP, -1)
        while True:
            for row in ray.get(handle.results.remote(trial)):
                if row["step"] > seen:
                    seen = row["step"]
                    tune.report({**rows.report_metrics(row, metrics, total), "step": total})
            if not ray.get(handle.owed.remote(trial)):
                break
            time.sleep(1.0)
    done = ray.get(handle.results.remote(trial))
    tune.report(
        {
            "trial_complete": 1,
            "step": total,
            **(rows.report_metrics(done[-1], metrics, total) if done else {}),
        }
    )
