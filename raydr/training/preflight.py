"""Checks on the driver before anything runs: the data against the config, the storage, the
checkpoint a rerun would resume from. Bad input fails here in one clear line rather than as a
traceback from inside N workers."""

from __future__ import annotations

import logging
from pathlib import Path

from raydr.config import RaydrConfig
from raydr.errors import RaydrError

log = logging.getLogger(__name__)


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
    from raydr.training import checkpoint, plan

    check_storage(cfg)
    checkpoint.check_model(cfg.model)  # token lengths the model can take, before any worker
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
    check_other_dev_sets(cfg, rows)
    micro_batches = plan.steps_per_epoch(len(rows), world, tcfg.batch_size, 1)
    check_memory_bank(tcfg, world, micro_batches)
    if micro_batches < tcfg.grad_accum:
        raise RaydrError(
            f"training.grad_accum={tcfg.grad_accum} exceeds the {micro_batches} micro-batches per "
            f"epoch ({len(rows)} queries / (batch_size {tcfg.batch_size} x {world} workers))"
        )


def check_mining(cfg: RaydrConfig, rows) -> None:
    """Dynamic negatives: the index's clusters and probes, landmarks and negatives per query
    must fit in the training corpus."""
    from raydr.data.tables import corpus_size

    mcfg, tcfg = cfg.training.mining, cfg.training
    n_docs = corpus_size(cfg.data.path)
    if mcfg.clusters is not None and mcfg.clusters > n_docs:
        raise RaydrError(
            f"training.mining.clusters={mcfg.clusters} is larger than the training corpus "
            f"({n_docs} docs in {cfg.data.path}); expected at most {n_docs}, or unset (√N)"
        )
    clusters = mcfg.clusters_for(n_docs)
    if isinstance(mcfg.nprobe, int) and mcfg.nprobe > clusters:
        raise RaydrError(
            f"training.mining.nprobe={mcfg.nprobe} exceeds the index's {clusters} clusters "
            f"(training.mining.clusters, default √N of {n_docs} docs); expected at most "
            f"{clusters}, or exact"
        )
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


def check_other_dev_sets(cfg: RaydrConfig, rows) -> None:
    """``validation.also``: each dev set loads, has its own name, and shares no query (by id in
    the training dataset, by text anywhere) with what the model trains on; selecting on
    trained queries would reward memorising them."""
    from raydr.data.split import split_queries

    vcfg = cfg.validation
    if not vcfg.enabled or not vcfg.also:
        return
    main = Path(cfg.data.path).name
    trained_ids = {r.query_id for r in rows}
    trained_texts = {" ".join(r.query.casefold().split()) for r in rows}
    for i, dev in enumerate(vcfg.also):
        field = f"validation.also[{i}]"
        if dev.label() == main:
            raise RaydrError(
                f"{field}: named {main!r}, as validation.split's data folder is; set its name"
            )
        try:
            queries = split_queries(dev.path, dev.split)
        except RaydrError as exc:
            raise RaydrError(f"{field}: {exc}") from None
        same_data = Path(dev.path).resolve() == Path(cfg.data.path).resolve()
        shared = [
            q
            for q, text in zip(queries["query_ids"], queries["queries"], strict=True)
            if (same_data and q in trained_ids)
            or " ".join(text.casefold().split()) in trained_texts
        ]
        if shared:
            raise RaydrError(
                f"{field}: {len(shared)} of its {len(queries['query_ids'])} {dev.split!r} queries "
                f"are training queries (training.split {cfg.training.split!r}, e.g. "
                f"{shared[0]!r}); expected a dev set the model never trains on"
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
    snapshot = run_dir / checkpoint.RAY_SNAPSHOT  # Ray Train's record of commits
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
