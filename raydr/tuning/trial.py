"""One Tune trial: its config, a TorchTrainer reporting through Tune, then the last validations.

Each trial is a Tune function that builds its own TorchTrainer (Ray Train V2 cannot be handed to
a Tuner). All trials push checkpoints to one shared validation pool; rank 0 puts the newest
validated metrics of its own checkpoints into every report, with the step they were measured
on, which is the scheduler's time attribute. After training a trial keeps reporting until its
last checkpoints are validated; a trial the scheduler stops still has its submitted
checkpoints validated, because the pool owns that work.
"""

from __future__ import annotations

import time
from typing import Any

from raydr.config import RaydrConfig
from raydr.tuning.space import apply
from raydr.validation import ledger as rows
from raydr.validation.ledger import VALIDATED_STEP


def tune_trial(params: dict[str, Any], base: dict[str, Any], pool: str) -> None:
    """One trial: its config, a TorchTrainer reporting through Tune, then the last validations."""
    import ray
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from raydr.training.trainer import fit
    from raydr.validation.client import PoolHook, PoolNegatives
    from raydr.validation.pool import NAMESPACE

    trial = tune.get_context().get_trial_id()
    tree = apply(base, params)
    # Each trial is its own Ray Train run, beside the others in the job's training storage.
    tree["name"] = f"{base['name']}-{trial}"
    cfg = RaydrConfig.model_validate(tree)
    hook = PoolHook(pool, trial, list(cfg.eval.metrics))
    negatives = PoolNegatives.for_run(cfg, pool, trial)
    result = fit(cfg, hook=hook, callbacks=[TuneReportCallback()], negatives=negatives)
    if result.error:
        raise result.error
    # Training is over; report the validations that were still running so the scheduler and
    # the results see every checkpoint's metric.
    handle = ray.get_actor(pool, namespace=NAMESPACE)
    total = result.metrics["step"]
    seen = result.metrics.get(VALIDATED_STEP, -1)
    while True:
        done = ray.get(handle.results.remote(trial))
        for row in done:
            if row["step"] > seen:
                seen = row["step"]
                tune.report({**rows.report_metrics(row, cfg.eval.metrics, total), "step": total})
        owed = ray.get(handle.owed.remote(trial))
        if not owed:
            break
        time.sleep(1.0)
    tune.report(
        {
            "trial_complete": 1,
            "step": total,
            **(rows.report_metrics(done[-1], cfg.eval.metrics, total) if done else {}),
        }
    )
