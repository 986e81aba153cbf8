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

Two users: shard *tasks* (``scatter``/``gather``) for a search's confirmations and the final
test score, and the pool's own warm validators (``pool_shards`` cuts the corpus or subset,
``Validator.shard`` runs one part, ``Gathering`` collects them into one closing row).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
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
    from raydr.training import checkpoint

    torch.set_num_threads(max(1, threads))  # Ray starts tasks with one thread
    q = queries_of(cfg, split, limit)
    retriever = DenseRetriever(*checkpoint.load(path, cfg.model), cfg)
    query_emb = retriever.embed(q["queries"], "queries", batch_size=cfg.validation.batch_size)
    return top_within(cfg, retriever, PassageStore(passages), range(lo, hi), query_emb, q)[0]


def top_within(
    cfg: RaydrConfig,
    retriever: Any,
    store: Any,
    positions: Sequence[int],
    query_emb: np.ndarray,
    q: dict[str, Any],
) -> tuple[Run, float, np.ndarray]:
    """Each query's exact top-``eval.depth`` among the store's passages at ``positions``,
    encoded now (read by position: nothing else of the corpus is held). ``query_emb``: (Q, D)
    for ``q["query_ids"]``. → (the run, seconds spent encoding, the (len(positions), D)
    passage embeddings)."""
    from raydr.retrieval.index import build_index, retrieve

    t0 = time.perf_counter()
    doc_ids = [store.doc_id(p) for p in positions]
    doc_emb = retriever.embed(
        store.texts(positions), "passages", batch_size=cfg.validation.batch_size
    )
    encode_s = time.perf_counter() - t0
    index = build_index(doc_emb, cfg.index)
    return retrieve(index, query_emb, q["query_ids"], doc_ids, cfg.eval.depth), encode_s, doc_emb


def merge(parts: list[Run], depth: int) -> Run:
    """Shards' runs merged: each query's top-``depth`` over all of them (ties by doc id)."""
    merged: Run = {}
    for run in parts:
        for qid, docs in run.items():
            merged.setdefault(qid, {}).update(docs)
    return {
        qid: dict(sorted(docs.items(), key=lambda kv: (-kv[1], kv[0]))[:depth])
        for qid, docs in merged.items()
    }


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
    return merge(parts, cfg.eval.depth)


@dataclass
class Gathering:
    """One scattered checkpoint in the pool, shard by shard: the shards' outputs as they come
    (``Validator.shard``), how often each was run, and whether its closing row is written."""

    shards: int
    outputs: dict[int, dict[str, Any]] = field(default_factory=dict)
    runs: dict[int, int] = field(default_factory=dict)  # part → times started
    closed: bool = False  # done or failed: later outputs of this checkpoint are dropped
    validate: bool = True  # a closing row is owed (a mining-only refresh owes none)
    refresh: bool = False  # the shards' embeddings also make the trial's mining index
    embeddings: dict[int, Any] = field(default_factory=dict)  # part → ref, for a refresh
    queued_at: float = field(default_factory=time.time)

    def started(self, part: int) -> None:
        self.runs[part] = self.runs.get(part, 0) + 1

    def add(self, part: int, output: dict[str, Any]) -> bool:
        """A shard's output arrived; → whether every shard is in."""
        self.outputs[part] = output
        return len(self.outputs) == self.shards

    def metrics(self, cfg: RaydrConfig, q: dict[str, Any], step: int) -> dict[str, Any]:
        """The merged run scored once: a flat metrics dict like one validator's, with the
        primary metric declared, each shard's runs (a redone shard shows 2) and the slowest
        shard's timings (the checkpoint waited for it)."""
        from raydr.retrieval.metrics import score_run

        outs = [self.outputs[i] for i in range(self.shards)]
        run = merge([o["run"] for o in outs], cfg.eval.depth)
        scored, _ = score_run(q["qrels"], run, cfg.eval)
        started = min(o["started_at"] for o in outs)
        finished = max(o["finished_at"] for o in outs)
        return {
            **scored,
            "primary_metric": cfg.eval.primary_metric,
            "checkpoint_step": step,
            "subset_size": sum(o["passages_encoded"] for o in outs),
            "num_queries": len(q["query_ids"]),
            "passages_encoded": sum(o["passages_encoded"] for o in outs),
            "load_s": max(o["load_s"] for o in outs),
            "encode_s": max(o["encode_s"] for o in outs),
            "validation_s": finished - started,
            "shards": self.shards,
            "shard_runs": [self.runs.get(i, 0) for i in range(self.shards)],
            "node_id": outs[0]["node_id"],
            "node_ids": sorted({str(o["node_id"]) for o in outs}),
            "started_at": started,
            "finished_at": finished,
        }


def pool_shards(cfg: RaydrConfig, subset: list[str] | None) -> tuple[str, list] | None:
    """Where a pool's scattered validations read (the store of ``data.path``) and each shard's
    passage positions: ranges of the corpus, or slices of the subset's positions; None when
    checkpoints are validated whole (``validation.shards`` resolves to 1)."""
    from raydr.data import store

    n = cfg.validation.resolved_shards()
    if n <= 1:
        return None
    folder = store.ensure_passages(cfg.data.path)
    passages = store.PassageStore(folder)
    if subset is None:
        parts: list = [range(lo, hi) for lo, hi in shard_ranges(len(passages), n)]
    else:
        where = np.sort(passages.positions(subset))
        parts = [where[lo:hi] for lo, hi in shard_ranges(len(where), n)]
    return str(folder), parts


def full_corpus_metrics(
    cfg: RaydrConfig, path: str, step: int, shards: int, split: str | None = None
) -> dict[str, Any]:
    """Scatter, then gather: the checkpoint's metric over the whole corpus."""
    t0 = time.perf_counter()
    out = gather(cfg, scatter(cfg, path, shards, split), step, split)
    out["validation_s"] = time.perf_counter() - t0
    return out
