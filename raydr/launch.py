"""One validated training run, from the driver: the trainer, and the validators beside it.

``train`` is what ``raydr train`` (and every benchmark that trains) calls: it resolves the
config once, asks for the trainer's and the validators' resources together, starts the run's
validation pool (or the inline validator), runs Ray Train, and returns once the last checkpoint
is validated. It sits above ``validation`` and ``training`` and below ``tuning``'s searches,
which start one such trainer per trial themselves.
"""

from __future__ import annotations

import logging
from typing import Any

from raydr.config import RaydrConfig
from raydr.tracking import TrackingRun
from raydr.validation.ledger import Ledger, Row

log = logging.getLogger(__name__)


def train(
    cfg: RaydrConfig, loop=None, tracking: TrackingRun | None = None
) -> tuple[Any, list[Row] | None]:
    """Train ``cfg`` with every checkpoint validated as ``cfg.validation`` says.

    → (Ray Train result, the run's done ledger rows; None without validation). Returns once the
    last checkpoint is validated. ``loop`` replaces the per-worker function (tests);
    ``tracking``: the run (MLflow, W&B) that rank 0's reports and the pool's validations go
    to."""
    import ray

    from raydr.training.trainer import fit, prepare
    from raydr.validation.client import InlineHook, PoolHook, PoolNegatives
    from raydr.validation.pool import demand, pool_name, start_pool, wait_idle
    from raydr.validation.sampling import prepare_subset

    cfg = cfg.with_absolute_paths()  # once, here: workers and actors run in other folders
    log.info("storage:\n%s", cfg.paths.describe())
    # The validators' nodes are asked for with the trainer's, so both scale up side by side.
    pooled = cfg.validation.enabled and cfg.validation.mode == "pool"
    prepare(cfg, also=[demand(cfg)] if pooled else [])
    if not cfg.validation.enabled:
        return fit(cfg, loop=loop, tracking=tracking), None
    if cfg.validation.mode == "inline":
        hook = InlineHook(cfg, prepare_subset(cfg), cfg.name)
        result = fit(cfg, hook=hook, loop=loop, tracking=tracking)
        rows = Ledger.for_run(cfg).results(cfg.name)
        if tracking is not None:  # inline rows are written in the loop: logged once it ends
            for row in rows:
                tracking.log_validation(row["step"], row["metrics"])
            tracking.close_here()
        return result, rows
    pool = start_pool(cfg, tracking=tracking)
    hook = PoolHook(pool_name(cfg.name), cfg.name)
    negatives = PoolNegatives.for_run(cfg, pool_name(cfg.name), cfg.name)
    result = fit(cfg, hook=hook, loop=loop, negatives=negatives, tracking=tracking)
    log.info("training finished; waiting for pending validations")
    wait_idle(pool)
    done = ray.get(pool.results.remote(cfg.name))
    ray.get(pool.close.remote())
    ray.kill(pool)
    return result, done
