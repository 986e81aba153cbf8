"""The training side of validation: the checkpoint hooks the loop calls, and ``train``.

``PoolHook`` pushes each committed checkpoint to the run's ``ValidationPool`` and never waits;
``InlineHook`` validates right there on rank 0 (the naive baseline the benchmarks compare
against). Both read validated metrics back through the ledger's one projection.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from raydr.config import RaydrConfig
from raydr.validation import ledger as rows
from raydr.validation.ledger import Ledger

log = logging.getLogger(__name__)


@dataclass
class PoolHook:
    """Rank 0's handle on a named, running ValidationPool (looked up lazily in the worker)."""

    pool: str  # the pool actor's name
    trial: str  # the ledger's trial key
    metrics: list[str]  # the metric names a report carries

    def _handle(self):
        import ray

        from raydr.validation.pool import NAMESPACE

        return ray.get_actor(self.pool, namespace=NAMESPACE)

    def on_checkpoint(self, step: int, uri: str) -> None:
        # Fire and forget: the pool owns the work from here, even if this trial is stopped.
        self._handle().submit.remote(self.trial, step, uri)

    def validated(self, step: int) -> dict[str, Any]:
        import ray

        # An immediate lookup in the pool's ledger, not a wait for any validation to finish.
        latest = ray.get(self._handle().latest.remote(self.trial))
        return {} if latest is None else rows.report_metrics(latest, self.metrics, step)


@dataclass
class InlineHook:
    """Validate on rank 0 and make every worker wait: the baseline ``raydr bench async`` beats."""

    config: dict[str, Any]
    subset: list[str] | None
    trial: str
    _validator: Any = field(default=None, init=False, repr=False)

    def _ledger(self) -> Ledger:
        return Ledger.for_run(RaydrConfig.model_validate(self.config))

    def on_checkpoint(self, step: int, uri: str) -> None:
        import torch

        from raydr.validation.validator import Validator

        if self._validator is None:  # built on first use, in the worker, then kept warm
            self._validator = Validator(self.config, self.subset, threads=torch.get_num_threads())
        metrics = self._validator.validate(uri, step)
        self._ledger().append(rows.done(self.trial, step, uri, metrics))

    def validated(self, step: int) -> dict[str, Any]:
        latest = self._ledger().latest(self.trial)
        cfg = RaydrConfig.model_validate(self.config)
        return {} if latest is None else rows.report_metrics(latest, cfg.eval.metrics, step)


def train(cfg: RaydrConfig, loop=None) -> tuple[Any, list[rows.Row] | None]:
    """Train ``cfg`` with every checkpoint validated as ``cfg.validation`` says.

    → (Ray Train result, the run's done ledger rows; None without validation). Returns once the
    last checkpoint is validated. ``loop`` replaces the per-worker function (tests)."""
    import ray

    from raydr.training.trainer import fit, prepare
    from raydr.validation.pool import pool_name, start_pool, wait_idle
    from raydr.validation.sampling import prepare_subset

    cfg = cfg.with_absolute_paths()
    log.info("storage:\n%s", cfg.paths.describe())
    prepare(cfg)
    if not cfg.validation.enabled:
        return fit(cfg, loop=loop), None
    if cfg.validation.mode == "inline":
        hook = InlineHook(cfg.model_dump(mode="json"), prepare_subset(cfg), cfg.name)
        return fit(cfg, hook=hook, loop=loop), Ledger.for_run(cfg).results(cfg.name)
    pool = start_pool(cfg)
    hook = PoolHook(pool_name(cfg.name), cfg.name, list(cfg.eval.metrics))
    result = fit(cfg, hook=hook, loop=loop)
    log.info("training finished; waiting for pending validations")
    wait_idle(pool)
    done = ray.get(pool.results.remote(cfg.name))
    ray.get(pool.close.remote())
    ray.kill(pool)
    return result, done
