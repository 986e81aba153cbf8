"""``raydr train``: a Ray Train ``TorchTrainer`` built from config, sized to what really exists."""

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
):
    """A ``TorchTrainer`` for ``cfg``; rank 0 hands each committed checkpoint to ``hook``.

    ``loop`` replaces the per-worker function (tests wrap it to inject faults)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from raydr.training.loop import train_loop_per_worker

    cfg = cfg.with_absolute_paths()
    tcfg = cfg.training
    gpu = use_gpu(cfg)
    resources = worker_resources(cfg)
    storage = cfg.paths.train_storage
    ctx = LoopContext(
        config=cfg.model_dump(mode="json"),
        storage=storage,
        threads=max(1, int(resources.get("CPU", 1))),
        hook=hook,
        negatives=negatives,
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
            checkpoint_config=CheckpointConfig(num_to_keep=tcfg.num_to_keep),
            failure_config=FailureConfig(max_failures=tcfg.max_failures),
            callbacks=callbacks,
        ),
    )


KNOWN_SCHEMES = {"s3", "gs", "gcs", "hdfs", "abfs", "abfss", "file", "mock"}


def check_storage(cfg: RaydrConfig) -> None:
    """``training.storage_path`` is a local path or a URI pyarrow's filesystems understand."""
    storage = cfg.paths.train_storage
    scheme, sep, _ = storage.partition("://")
    if not sep:
        return
    if scheme not in KNOWN_SCHEMES:
        raise RaydrError(
            f"training.storage_path {storage!r}: unknown URI scheme {scheme!r} (expected a local "
            f"path, s3://, gs:// or another pyarrow filesystem: {', '.join(sorted(KNOWN_SCHEMES))})"
        )
    import pyarrow.fs

    try:
        pyarrow.fs.FileSystem.from_uri(storage)
    except (pyarrow.ArrowInvalid, OSError, ValueError) as exc:
        raise RaydrError(f"training.storage_path {storage!r}: {exc}") from None


def warn_local_storage_on_multinode(cfg: RaydrConfig) -> None:
    """Local paths are not shared between nodes: Ray cannot gather checkpoints there."""
    import ray

    alive = [n for n in ray.nodes() if n.get("Alive")]
    if len(alive) > 1 and "://" not in cfg.paths.train_storage:
        log.warning(
            "training.storage_path %r is a local path on a %d-node cluster: unless it is a shared "
            "mount (NFS, /mnt/cluster_storage), checkpoints and the ledger end up on different "
            "nodes; use s3://... or gs://...",
            cfg.paths.train_storage,
            len(alive),
        )


def preflight(cfg: RaydrConfig) -> None:
    """Check the data against the config on the driver, so bad input fails in one clear line
    here rather than as a traceback from inside N workers."""
    from raydr.data.groups import build_rows, check_group_size, load_negatives, shard
    from raydr.training import plan

    check_storage(cfg)
    tcfg = cfg.training
    negatives = load_negatives(tcfg.negatives) if tcfg.negatives else None
    dynamic = tcfg.mining.source == "dynamic"
    if tcfg.group_size > 1 and negatives is None and not dynamic:
        raise RaydrError(
            f"training.group_size={tcfg.group_size} needs hard negatives: set training.negatives "
            f"(run `raydr mine-negatives CONFIG` to make them) or training.mining.source=dynamic"
        )
    rows = build_rows(cfg.data.path, tcfg.split, negatives)
    if negatives is not None or not dynamic:  # dynamic: the table only bridges the first index
        check_group_size(rows, tcfg.group_size, str(tcfg.negatives))
    if dynamic:
        check_mining(cfg, rows)
    world = plan.world_sizes(tcfg)[1]
    shard(len(rows), 0, cfg.seed, 0, world, tcfg.batch_size)  # one full step, or a clear error
    warn_selection_on_training_queries(cfg, {r.query_id for r in rows})
    micro_batches = plan.steps_per_epoch(len(rows), world, tcfg.batch_size, 1)
    check_memory_bank(tcfg, world, micro_batches)
    if micro_batches < tcfg.grad_accum:
        raise RaydrError(
            f"training.grad_accum={tcfg.grad_accum} exceeds the {micro_batches} micro-batches per "
            f"epoch ({len(rows)} queries / (batch_size {tcfg.batch_size} x {world} workers))"
        )


def check_mining(cfg: RaydrConfig, rows) -> None:
    """Dynamic negatives: landmarks and negatives per query must fit in the training corpus."""
    from raydr.data.tables import load_corpus

    mcfg, tcfg = cfg.training.mining, cfg.training
    n_docs = load_corpus(cfg.data.path).num_rows
    if mcfg.landmarks > n_docs:
        raise RaydrError(
            f"training.mining.landmarks={mcfg.landmarks} is larger than the training corpus "
            f"({n_docs} docs in {cfg.data.path}); expected at most {n_docs}"
        )
    judged = max(len(r.positives) for r in rows) + 1  # + the query's own id (BEIR)
    if tcfg.group_size - 1 > n_docs - judged:
        raise RaydrError(
            f"training.group_size={tcfg.group_size} asks for {tcfg.group_size - 1} negatives "
            f"per query, but the corpus has only {n_docs} docs ({judged} judged for some query)"
        )


def check_memory_bank(tcfg, world: int, micro_batches: int) -> None:
    """The bank must hold at least one step's passages, and at most an epoch's (beyond that it
    would hold copies of the same passages from the epoch before)."""
    size = tcfg.memory_bank.size
    if not size:
        return
    per_step = world * tcfg.batch_size * tcfg.group_size
    per_epoch = micro_batches * per_step
    if size < per_step:
        raise RaydrError(
            f"training.memory_bank.size={size} does not hold one step's passages: "
            f"{world} workers x batch_size {tcfg.batch_size} x group_size {tcfg.group_size} = "
            f"{per_step}; use a multiple of {per_step}"
        )
    if size > per_epoch:
        raise RaydrError(
            f"training.memory_bank.size={size} exceeds the {per_epoch} passages of one epoch "
            f"({micro_batches} micro-batches x {per_step}); the bank would hold the same "
            f"passages twice: use at most {per_epoch}"
        )


def warn_selection_on_training_queries(cfg: RaydrConfig, trained: set[str]) -> None:
    """Checkpoints selected on queries the model trains on look better than they are."""
    from raydr.data.tables import load_qrels

    vcfg = cfg.validation
    if not vcfg.enabled:
        return
    shared = trained & set(load_qrels(cfg.data.path, vcfg.split))
    if shared:
        log.warning(
            "validation.split %r shares %d queries with training.split %r: checkpoint selection "
            "on them is optimistic; carve a dev split (raydr import-beir --dev-from %s)",
            vcfg.split,
            len(shared),
            cfg.training.split,
            cfg.training.split,
        )


def check_existing_checkpoints(cfg: RaydrConfig) -> None:
    """A rerun resumes from the run's latest *committed* checkpoint; refuse a damaged one
    before Ray hands it to the workers. Folders Ray never committed (a crash mid-upload) are
    not resumed from, so they are not checked."""
    import json

    from raydr.training import checkpoint

    if "://" in cfg.paths.train_storage:
        return  # cloud storage: the workers' checkpoint.read() still checks on load
    run_dir = Path(cfg.paths.train_storage) / cfg.name
    snapshot = run_dir / "checkpoint_manager_snapshot.json"  # Ray Train's record of commits
    try:
        latest = json.loads(snapshot.read_text())["latest_checkpoint_result"]["checkpoint_dir_name"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # nothing committed yet (or a Ray version that keeps it elsewhere)
    folder = run_dir / latest
    try:
        checkpoint.read(folder)
    except RaydrError as err:
        raise RaydrError(
            f"{err}; run {cfg.name!r} would resume from it: delete {run_dir} "
            f"or start a new run with name=<new name>"
        ) from None


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds on a dead host:port; ray.init would retry for a long time first."""
    import socket

    if address == "auto":
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise RaydrError(f"ray.address={address!r}: expected auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise RaydrError(
            f"ray.address={address!r}: cannot connect ({exc}); is the head running "
            f"(`ray start --head`, cluster/local.sh) and the port open?"
        ) from None


def init_ray(cfg: RaydrConfig) -> None:
    """Connect to ``ray.address``, or start a local Ray sized by the ``ray`` section."""
    import ray

    if ray.is_initialized():
        return
    rcfg = cfg.ray
    if not rcfg.address and os.environ.get("RAY_ADDRESS"):
        # Inside `ray job submit`: join the job's cluster; local sizing does not apply there.
        ray.init()
        return
    if rcfg.address:
        _check_reachable(rcfg.address)
        try:
            ray.init(address=rcfg.address)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise RaydrError(f"ray.address={rcfg.address!r}: cannot connect ({exc})") from None
        return
    # Keep the dashboard: Train V2's placement-group cleaner polls the State API it serves.
    # address="local": a new Ray of our size, even where a `ray start` cluster already runs
    # (plain ray.init() would join that one and reject the sizing).
    ray.init(
        address="local",
        num_cpus=rcfg.num_cpus,
        num_gpus=rcfg.num_gpus,
        object_store_memory=rcfg.object_store_memory,
    )


def prepare(cfg: RaydrConfig, also: Sequence[Demand] = ()) -> None:
    """Check the input against the config, then connect to (or start) Ray and check that the
    cluster can hold the workers (and ``also``): bad input fails here in one line, before
    anything runs."""
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
):
    """Train (after ``prepare``); → Ray Train's ``Result``. Rerunning with the same storage and
    name resumes from the latest committed checkpoint. ``hook`` receives every committed
    checkpoint on rank 0 (see ``raydr.validation.client``); ``negatives`` serves dynamic hard
    negatives to every rank; ``on_run`` is told the Train run's id before it starts (see
    ``release_nodes``)."""
    from ray.train import TrainingFailedError

    try:
        trainer = build_trainer(cfg, hook=hook, loop=loop, callbacks=callbacks, negatives=negatives)
        if on_run is not None:
            on_run(trainer.train_run_context.run_id)
        return trainer.fit()
    except TrainingFailedError as exc:
        raise training_failed(cfg, exc) from None


def release_nodes(run_id: str) -> bool:
    """Withdraw Train run ``run_id``'s standing request to Ray's autoscaling coordinator.

    Train withdraws it itself when a run ends, but not when its controller dies with the Tune
    trial that owns it (a trial the scheduler stops): the autoscaler then keeps that trial's
    nodes until the request expires, up to 200 s later (180 s plus one 20 s coordinator tick).
    → whether a coordinator was there to ask."""
    import ray

    try:
        coordinator = ray.get_actor("AutoscalingCoordinator", namespace="AutoscalingCoordinator")
    except ValueError:  # no Train run on this cluster has asked for anything
        return False
    # Train's requester id for a run (ray.train.v2 scaling_policy.after_controller_start).
    ray.get(coordinator.cancel_request.remote(f"train-{run_id}"), timeout=30)
    return True


def training_failed(cfg: RaydrConfig, exc: Exception) -> RaydrError:
    """Ray's error (every rank's traceback, dozens of lines) → a file in the run folder, and
    one line naming the first failing rank's cause and that file."""
    from raydr import atomic

    failures: dict[int, BaseException] = getattr(exc, "worker_failures", None) or {}
    if failures:
        ranks = sorted(failures)
        who = f"rank{'s' if len(ranks) > 1 else ''} {','.join(map(str, ranks))}"
        cause = f"{who}: {_one_line(failures[ranks[0]])}"
    else:  # the controller failed (e.g. it could not schedule the workers)
        cause = _one_line(getattr(exc, "controller_failure", exc))
    path = cfg.with_absolute_paths().paths.run_dir / "train-failure.log"
    try:
        atomic.write_text(path, f"{type(exc).__name__}: {exc}\n")
    except OSError as err:  # the one line must still come out
        return RaydrError(f"training failed: {cause} (could not write {path}: {err})")
    return RaydrError(f"training failed: {cause}; full log: {path}")


def _one_line(exc: BaseException) -> str:
    """Our own errors already read as one line; others get their type and last line."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    text = lines[-1].strip() if lines else ""
    return text if isinstance(exc, RaydrError) else f"{type(exc).__name__}: {text}".rstrip(": ")
