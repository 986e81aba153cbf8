"""Experiment tracking (``tracking:`` in a job), in MLflow or Weights & Biases, through Ray's
own integrations: params, every training report, every validated metric at the step of the
checkpoint it measured, and the selected model. ``raydr.tracking.mlflow_run`` and
``raydr.tracking.wandb_run`` say how each backend lays a job out.

Both run objects answer the same calls, made by the process that holds each part of a job:

- the driver: ``start`` → the run; ``log_model(folder)`` and ``end(ok)`` when training is over;
- rank 0: ``join_on_worker()`` → a handle; ``log_report(handle, metrics, step)``;
  ``leave_on_worker(handle)``;
- the validation pool: ``log_validation(step, metrics)`` per closed row; ``close_here()``.
"""

from __future__ import annotations

from raydr.config import RaydrConfig
from raydr.tracking.mlflow_run import MlflowRun
from raydr.tracking.names import VALIDATION, flat, metric_name, numbers
from raydr.tracking.wandb_run import WandbRun

TrackingRun = MlflowRun | WandbRun

__all__ = ["VALIDATION", "TrackingRun", "flat", "metric_name", "numbers", "start", "tune_callback"]


def start(cfg: RaydrConfig) -> TrackingRun | None:
    """Open (or, for a rerun, reopen) the job's run; None without ``tracking``."""
    if cfg.tracking.backend == "mlflow":
        from raydr.tracking import mlflow_run

        return mlflow_run.start(cfg)
    if cfg.tracking.backend == "wandb":
        from raydr.tracking import wandb_run

        return wandb_run.start(cfg)
    return None


def tune_callback(cfg: RaydrConfig):
    """Ray Tune's logger callback for a search (one run per trial); None without tracking."""
    if cfg.tracking.backend == "mlflow":
        from raydr.tracking import mlflow_run

        return mlflow_run.tune_callback(cfg)
    if cfg.tracking.backend == "wandb":
        from raydr.tracking import wandb_run

        return wandb_run.tune_callback(cfg)
    return None
