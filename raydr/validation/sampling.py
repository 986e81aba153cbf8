"""Corpus-subset strategies for validation (Asyncval): which documents a validator searches.

This module also owns the run's saved subset (``subset_path``): chosen once per run, so all its
checkpoints are compared on one subset, and read back by ``raydr evaluate --subset``.

Every strategy keeps all judged documents, so a relevant document is never missing from the
subset; what differs is the set of distractors. Subsets are seeded and reproducible.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from raydr.config import BM25Config, RaydrConfig, SamplingConfig
from raydr.errors import RaydrError
from raydr.validation.ledger import validation_dir

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


def subset_path(cfg: RaydrConfig) -> Path:
    """Where a run keeps the doc ids its validators search (beside the ledger)."""
    return validation_dir(cfg) / "subset.json"


def subset_beside(ledger_path: str | Path) -> Path:
    """Where a run saved its subset, found from its ledger's path (``raydr best``)."""
    return Path(ledger_path).parent / "subset.json"


def read_subset(path: str | Path) -> list[str]:
    """The doc ids of a saved validation subset, or one clear error."""
    try:
        return list(json.loads(Path(path).read_text())["doc_ids"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RaydrError(f"{path}: expected a validation subset.json ({exc})") from None


def prepare_subset(cfg: RaydrConfig) -> list[str] | None:
    """Pick the run's validation corpus subset once and save its ids beside the ledger.

    A restarted run reuses the saved subset. → None for the full corpus.
    """
    from raydr import atomic
    from raydr.data.split import load_split

    scfg = cfg.validation.sampling
    path = subset_path(cfg)
    if path.exists():
        saved = json.loads(path.read_text())
        if saved.get("sampling") != scfg.model_dump():
            raise RaydrError(
                f"{path}: saved with sampling {saved.get('sampling')}, but the config asks for "
                f"{scfg.model_dump()}; use a new run name to change the subset"
            )
        return saved["doc_ids"]
    split = load_split(cfg.data.path, cfg.validation.split).limit_queries(
        cfg.validation.max_queries
    )
    pools: dict[str, set[str]] = {}
    if scfg.strategy in {"bm25-pool", "union"}:
        pools["bm25"] = bm25_pool(
            split.passages, split.doc_ids, split.queries, scfg.depth, cfg.bm25
        )
    if scfg.strategy in {"dense-pool", "union"}:
        from raydr.retrieval.dense import DenseRetriever, search_and_score
        from raydr.training import checkpoint

        # The initial model (model.name): what the pool looks like before training moves it.
        retriever = DenseRetriever(*checkpoint.load(cfg.model.name, cfg.model), cfg)
        _, run = search_and_score(
            cfg,
            retriever.embed(split.passages, "passages"),
            retriever.embed(split.queries, "queries"),
            split.doc_ids,
            split.query_ids,
            split.qrels,
        )
        pools["dense"] = run_pool(run, scfg.depth)
    subset = select(scfg, split.doc_ids, split.qrels, **pools)
    check_queries(split.qrels, subset, cfg.validation.split)
    atomic.write_json(path, {"sampling": scfg.model_dump(), "size": len(subset), "doc_ids": subset})
    return None if scfg.strategy == "full" else subset
