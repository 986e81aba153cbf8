"""A Ray Train ``TorchTrainer`` built from config, sized to what really exists, and its ``fit``.

The checks before a run are in ``preflight``, connecting to Ray in ``raydr.connect``, the
one-line failure text in ``failure``."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from raydr import capacity
from raydr.capacity import Demand
from raydr.config import RaydrConfig
from raydr.errors import RaydrError
from raydr.tracking import TrackingRun
from raydr.training.context import CheckpointHook, LoopContext, NegativeSource

log = logging.getLogger(__name__)


def use_gpu(cfg: RaydrConfig) -> bool:
    """GPUs only where torch can really use them: Ray's logical GPUs are not enough
    (``use_gpu=True`` without CUDA crashes in NCCL / prepare_model). On a cluster
    (``ray.address`` set) whose workers are asked for GPUs, the workers' nodes decide, not the
    driver's: on ``cluster/aws.yaml`` the driver runs on a CPU head. (A Tune trial runs
    without RAY_ADDRESS: ``run_search`` hands it the address.)"""
    import torch

    if cfg.training.use_gpu == "no":
        return False
    available = torch.cuda.is_available()
    # A cluster: named in the config, or joined through `ray job submit` (RAY_ADDRESS).
    on_cluster = cfg.ray.address is not None or bool(os.environ.get("RAY_ADDRESS"))
    asks = cfg.training.resources_per_worker.get("GPU", 0) > 0
    if cfg.training.use_gpu == "yes":
        if not (available or on_cluster):
            raise RaydrError("training.use_gpu=yes, but torch sees no CUDA device on this node")
        return True
    return available or (on_cluster and asks)


def worker_resources(cfg: RaydrConfig) -> dict[str, float]:
    """One training worker's Ray resources (its GPU dropped where it will not use one)."""
    resources = dict(cfg.training.resources_per_worker)
    if not use_gpu(cfg):
        resources.pop("GPU", None)
    return resources


def demand(cfg: RaydrConfig) -> Demand:
    """What the trainer must find before it can start: its smallest worker group."""
    want = cfg.training.num_workers
    return Demand(
        field="training.resources_per_worker",
        bundle=worker_resources(cfg),
        count=want[0] if isinstance(want, tuple) else want,
        hint="lower training.num_workers or resources_per_worker",
    )


def check_capacity(cfg: RaydrConfig, also: Sequence[Demand] = ()) -> dict[str, float]:
    """Refuse a worker group (and ``also``: e.g. the validators) the cluster cannot hold,
    instead of hanging on placement; on an autoscaling cluster, wait for its nodes (all
    demands at once, so node types scale up side by side). → seconds waited per field."""
    return capacity.ensure(
        [demand(cfg), *also],
        autoscaler=cfg.ray.autoscaler,
        timeout_s=cfg.ray.scale_up_timeout_s,
        settle_s=cfg.ray.infeasible_after_s,
    )


def build_trainer(
    cfg: RaydrConfig,
    hook: CheckpointHook | None = None,
    callbacks: list[Any] | None = None,
    loop=None,
    negatives: NegativeSource | None = None,
    tracking: TrackingRun | None = None,
):
    """A ``TorchTrainer`` for ``cfg`` (resolved by the caller: ``with_absolute_paths``); rank 0
    hands each committed checkpoint to ``hook``.

    ``loop`` replaces the per-worker function (tests wrap it to inject faults)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from raydr.data import store
    from raydr.training import checkpoint
    from raydr.training.loop import train_loop_per_worker

    tcfg = cfg.training
    gpu = use_gpu(cfg)
    resources = worker_resources(cfg)
    storage = cfg.paths.train_storage
    if "://" not in storage:
        # Ray refuses to restart a run whose record names a checkpoint retention deleted.
        checkpoint.forget_deleted(Path(storage) / cfg.name)
    ctx = LoopContext(
        cfg=cfg,
        storage=storage,
        threads=max(1, int(resources.get("CPU", 1))),
        data=store.ensure(cfg.data.path, tcfg.split, tcfg.negatives),
        hook=hook,
        negatives=negatives,
        tracking=tracking,
    )
    return TorchTrainer(
        loop or train_loop_per_worker,
        train_loop_config={"ctx": ctx},
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=tcfg.num_workers,
            use_gpu=gpu,
            resources_per_worker=resources,
            elastic_resize_monitor_interval_s=tcfg.resize_interval_s,
        ),
        run_config=RunConfig(
            name=cfg.name,
            storage_path=storage,
            # With validation the ledger decides what stays (validation/retention.py), after the
            # metric lands; Ray's own pruning would go by age and could delete a checkpoint still
            # owed one. Without validation there is no metric, so age is all there is.
            checkpoint_config=CheckpointConfig(
                num_to_keep=None
                if cfg.validation.enabled or tcfg.keep.best is None
                else tcfg.keep.newest
            ),
            failure_config=FailureConfig(max_failures=tcfg.max_failures),
            callbacks=callbacks,
        ),
    )


def prepare(cfg: RaydrConfig, also: Sequence[Demand] = ()) -> None:
    """Check the input against the config, then connect to (or start) Ray and check that the
    cluster can hold the workers (and ``also``): bad input fails here in one line, before
    anything runs."""
    from raydr.connect import init_ray
    from raydr.training.preflight import (
        check_existing_checkpoints,
        preflight,
        warn_local_storage_on_multinode,
    )

    preflight(cfg)
    check_existing_checkpoints(cfg)
    init_ray(cfg)
    check_capacity(cfg, also)
    warn_local_storage_on_multinode(cfg)


def fit(
    cfg: RaydrConfig,
    hook: CheckpointHook | None = None,
    loop=None,
    callbacks=None,
    negatives: NegativeSource | None = None,
    on_run: Callable[[str], None] | None = None,
    tracking: TrackingRun | None = None,
):
    """Train (after ``prepare``); → Ray Train's ``Result``. Rerunning with the same storage and
    name resumes from the latest committed checkpoint. ``hook`` receives every committed
    checkpoint on rank 0 (see ``raydr.validation.client``); ``negatives`` serves dynamic hard
    negatives to every rank; ``on_run`` is told the Train run's id before it starts (see
    ``raydr.capacity.release_nodes``)."""
    from ray.train import TrainingFailedError

    from raydr.training.failure import training_failed

    try:
        trainer = build_trainer(
            cfg, hook=hook, loop=loop, callbacks=callbacks, negatives=negatives, tracking=tracking
        )
        if on_run is not None:
            on_run(trainer.train_run_context.run_id)
        return trainer.fit()
    except TrainingFailedError as exc:
        raise training_failed(cfg, exc) from None
