"""Corpus-subset strategies for validation (Asyncval): which documents a validator searches.

Every strategy keeps all judged documents, so a relevant document is never missing from the
subset; what differs is the set of distractors. Subsets are seeded and reproducible.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np

from raydr.config import BM25Config, SamplingConfig
from raydr.errors import RaydrError

log = logging.getLogger(__name__)

Run = Mapping[str, Mapping[str, float]]


def judged_docs(qrels: Mapping[str, Mapping[str, int]]) -> set[str]:
    return {d for docs in qrels.values() for d in docs}


def bm25_pool(
    passages: Sequence[str],
    doc_ids: Sequence[str],
    queries: Sequence[str],
    depth: int,
    cfg: BM25Config,
) -> set[str]:
    """Union of BM25 top-``depth`` over the validation queries."""
    from raydr.retrieval.bm25 import BM25

    _, pos = BM25(passages, cfg).search(queries, depth)
    return {doc_ids[p] for row in pos for p in row if p >= 0}


def run_pool(run: Run, depth: int) -> set[str]:
    """Union of each query's top-``depth`` in ``run`` (e.g. the initial checkpoint's run)."""
    pool: set[str] = set()
    for docs in run.values():
        pool.update(d for d, _ in sorted(docs.items(), key=lambda kv: -kv[1])[:depth])
    return pool


def random_subset(doc_ids: Sequence[str], judged: set[str], size: int, seed: int) -> set[str]:
    """Judged docs plus ``size`` others drawn uniformly (seeded)."""
    others = [d for d in doc_ids if d not in judged]
    if size > len(others):
        raise RaydrError(
            f"validation.sampling.size={size} is larger than the corpus allows: {len(doc_ids)} "
            f"docs, {len(others)} of them unjudged; lower size or use strategy=full"
        )
    picks = np.random.default_rng(seed).choice(len(others), size=size, replace=False)
    return {others[i] for i in picks}


def select(
    cfg: SamplingConfig,
    doc_ids: Sequence[str],
    qrels: Mapping[str, Mapping[str, int]],
    *,
    bm25: set[str] | None = None,
    dense: set[str] | None = None,
) -> list[str]:
    """The subset's doc ids in corpus order. ``bm25``/``dense`` are the precomputed pools."""
    corpus = set(doc_ids)
    judged = judged_docs(qrels) & corpus
    if cfg.strategy == "full":
        chosen = corpus
    elif cfg.strategy == "random":
        chosen = judged | random_subset(doc_ids, judged, cfg.size, cfg.seed)
    else:
        need = {"bm25-pool": ["bm25"], "dense-pool": ["dense"], "union": ["bm25", "dense"]}
        pools = {"bm25": bm25, "dense": dense}
        chosen = set(judged)
        for name in need[cfg.strategy]:
            if pools[name] is None:
                raise ValueError(f"strategy {cfg.strategy!r} needs the {name} pool")
            chosen |= pools[name]
    return [d for d in doc_ids if d in chosen]


def check_queries(
    qrels: Mapping[str, Mapping[str, int]], subset: Sequence[str], split: str
) -> dict:
    """Keep queries with at least one relevant doc in the subset; error if none are left."""
    inside = set(subset)
    kept = {
        q: docs for q, docs in qrels.items() if any(r > 0 and d in inside for d, r in docs.items())
    }
    if not kept:
        raise RaydrError(
            f"validation split {split!r}: no query has a relevant judged doc in the corpus subset "
            f"({len(subset)} docs); check the qrels split and the corpus"
        )
    if len(kept) < len(qrels):
        log.warning(
            "validation split %r: %d of %d queries have no relevant judged doc in the subset; "
            "they are left out",
            split,
            len(qrels) - len(kept),
            len(qrels),
        )
    return kept
