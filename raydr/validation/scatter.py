"""One checkpoint's full-corpus metric, its corpus encoded by several validators at once.

Scatter: the corpus, in the training data's passage order (``raydr.data.store``), is cut into
``shards`` contiguous position ranges. Each shard is a Ray task shaped like a validator (its
CPUs, GPU fraction and custom resources): it loads the checkpoint, encodes the split's queries
and its own passages only (read by position, so its memory is its shard's), and returns each
query's exact top-``eval.depth`` within the shard.

Gather: the driver merges the shards' lists per query. A doc in the corpus's top-``depth`` is
in its own shard's top-``depth``, so with an exact index (``index.type: flat``) the merge is the
exact top-``depth`` of the whole corpus, and the run is scored once with ir-measures: the metric
of one validator that encoded everything, up to the float noise of different batch shapes.

A shard whose process dies is run again by Ray (``validation.max_retries``), alone: the other
shards' results are already in the object store and stand.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from raydr.config import RaydrConfig

Run = dict[str, dict[str, float]]


def shard_ranges(n: int, shards: int) -> list[tuple[int, int]]:
    """``shards`` contiguous, near-equal position ranges covering ``range(n)``."""
    edges = np.linspace(0, n, max(1, min(shards, n)) + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in itertools.pairwise(edges)]


def queries_of(cfg: RaydrConfig, split: str, limit: bool = True) -> dict[str, Any]:
    """The split's queries as a validator scores them (``validation.max_queries`` first, when
    ``limit``; a final evaluation scores them all)."""
    from raydr.data.split import split_queries

    q = split_queries(cfg.data.path, split)
    n = cfg.validation.max_queries if limit else None
    if n is not None and n < len(q["query_ids"]):
        ids = q["query_ids"][:n]
        q = {
            "query_ids": ids,
            "queries": q["queries"][:n],
            "qrels": {i: q["qrels"][i] for i in ids},
        }
    return q


def shard_top(
    cfg: RaydrConfig,
    path: str,
    split: str,
    passages: str,
    lo: int,
    hi: int,
    threads: int,
    limit: bool = True,
) -> Run:
    """The split's queries against passages [lo, hi) of the store at ``passages``: each
    query's top-``eval.depth`` there, as a run."""
    import torch

    from raydr.data.store import PassageStore
    from raydr.retrieval.dense import DenseRetriever
    from raydr.retrieval.index import build_index, retrieve
    from raydr.training import checkpoint

    torch.set_num_threads(max(1, threads))  # Ray starts tasks with one thread
    store = PassageStore(passages)
    positions = range(lo, hi)
    doc_ids = [store.doc_id(p) for p in positions]
    q = queries_of(cfg, split, limit)
    retriever = DenseRetriever(*checkpoint.load(path, cfg.model), cfg)
    bs = cfg.validation.batch_size
    doc_emb = retriever.embed(store.texts(positions), "passages", batch_size=bs)
    query_emb = retriever.embed(q["queries"], "queries", batch_size=bs)
    return retrieve(
        build_index(doc_emb, cfg.index), query_emb, q["query_ids"], doc_ids, cfg.eval.depth
    )


def scatter(
    cfg: RaydrConfig,
    path: str,
    shards: int,
    split: str | None = None,
    task: Callable[..., Run] = shard_top,
    limit: bool = True,
) -> list:
    """Start the shards of one checkpoint's full-corpus validation. → their object refs.
    ``limit``: ``validation.max_queries`` applies (not to a final evaluation). ``task``
    replaces ``shard_top`` (tests wrap it to kill a shard)."""
    import ray

    from raydr.data import store

    v = cfg.validation
    passages = str(store.ensure_passages(cfg.data.path))
    n = len(store.PassageStore(passages))
    cpus = max(1.0, v.num_cpus)  # a whole core each: a shard is all encoding
    remote = ray.remote(task).options(
        num_cpus=cpus,
        num_gpus=v.num_gpus,
        resources=dict(v.resources) or None,
        max_retries=v.max_retries,  # a dead process: this shard again, alone
        retry_exceptions=False,  # an unloadable checkpoint fails the same way every time
    )
    split = split or v.split
    return [
        remote.remote(cfg, path, split, passages, lo, hi, int(cpus), limit)
        for lo, hi in shard_ranges(n, shards)
    ]


def gather(cfg: RaydrConfig, refs: list, step: int, split: str | None = None) -> dict[str, Any]:
    """Merge the shards' runs into the corpus's top-``depth`` and score it once.
    → a flat metrics dict like a validator's, with the primary metric declared."""
    from raydr.data.store import PassageStore, ensure_passages
    from raydr.retrieval.metrics import score_run

    t0 = time.perf_counter()
    run = gather_run(cfg, refs)
    waited = time.perf_counter() - t0
    q = queries_of(cfg, split or cfg.validation.split)
    metrics, _ = score_run(q["qrels"], run, cfg.eval)
    return {
        **metrics,
        "primary_metric": cfg.eval.primary_metric,
        "checkpoint_step": step,
        "num_queries": len(q["query_ids"]),
        "subset_size": len(PassageStore(ensure_passages(cfg.data.path))),  # all: the corpus
        "shards": len(refs),
        "gather_wait_s": waited,
    }


def gather_run(cfg: RaydrConfig, refs: list) -> Run:
    """The shards' runs merged: each query's top-``eval.depth`` over the whole corpus."""
    import ray

    from raydr.errors import RaydrError

    try:
        parts: list[Run] = ray.get(refs)
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, RaydrError):  # e.g. a checkpoint that cannot be loaded
            raise exc.cause from None
        raise
    merged: Run = {}
    for run in parts:
        for qid, docs in run.items():
            merged.setdefault(qid, {}).update(docs)
    depth = cfg.eval.depth
    return {
        qid: dict(sorted(docs.items(), key=lambda kv: (-kv[1], kv[0]))[:depth])
        for qid, docs in merged.items()
    }


def full_corpus_metrics(
    cfg: RaydrConfig, path: str, step: int, shards: int, split: str | None = None
) -> dict[str, Any]:
    """Scatter, then gather: the checkpoint's metric over the whole corpus."""
    t0 = time.perf_counter()
    out = gather(cfg, scatter(cfg, path, shards, split), step, split)
    out["validation_s"] = time.perf_counter() - t0
    return out
