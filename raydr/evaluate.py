"""``raydr evaluate`` and ``raydr bm25``: score a model (or BM25) on a split, write the outputs.

Thin on purpose: the split comes from ``data.split``, dense scoring from ``retrieval.dense``
(shared with the validators, so validation and evaluation cannot disagree), BM25 from
``retrieval.bm25``, metrics from ``retrieval.metrics``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raydr import atomic
from raydr.config import RaydrConfig
from raydr.data.split import load_split
from raydr.retrieval.metrics import per_query, write_trec_run

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    metrics: dict[str, float]
    primary_metric: str
    timings: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    # The primary metric per query (not written to metrics.json; ``raydr compare`` reads run
    # files): what a paired choice between models needs.
    per_query: dict[str, float] = field(default_factory=dict, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "metrics": self.metrics,
            "primary_metric": self.primary_metric,
            "timings_s": self.timings,
            **self.info,
        }


def evaluate(
    cfg: RaydrConfig,
    model_path: str | None = None,
    progress: bool = True,
    subset: list[str] | None = None,
    shards: int = 1,
) -> EvalResult:
    """Score ``model_path`` (default: ``cfg.model.name``) on ``cfg.data``; write outputs.

    ``subset`` restricts the corpus to those doc ids (a validation subset, for comparison).
    ``shards`` > 1: the corpus is encoded by that many validator-shaped Ray tasks at once
    (``raydr.validation.scatter``), and this process never holds it.
    """
    from raydr.retrieval.dense import DenseRetriever, search_and_score
    from raydr.training import checkpoint

    if shards > 1 and subset is None:
        return _evaluate_scattered(cfg, model_path or cfg.model.name, shards)
    t0 = time.perf_counter()
    batch_size = None
    if subset is not None:  # score exactly as the validators do: their queries, their docs
        split = load_split(cfg.data.path, cfg.validation.split)
        split = split.limit_queries(cfg.validation.max_queries).restrict(subset)
        # Their batch size too: bf16 results shift with padding (nDCG@10 by ~1e-4 on SciFact).
        batch_size = cfg.validation.batch_size
    else:
        split = load_split(cfg.data.path, cfg.data.split)
    retriever = DenseRetriever(*checkpoint.load(model_path or cfg.model.name, cfg.model), cfg)
    t_load = time.perf_counter()
    doc_emb = retriever.embed(split.passages, "passages", progress, batch_size)
    t_docs = time.perf_counter()
    query_emb = retriever.embed(split.queries, "queries", progress, batch_size)
    t_queries = time.perf_counter()
    metrics, run = search_and_score(
        cfg, doc_emb, query_emb, split.doc_ids, split.query_ids, split.qrels
    )
    t_end = time.perf_counter()
    result = EvalResult(
        metrics=metrics,
        primary_metric=cfg.eval.primary_metric,
        timings={
            "load": t_load - t0,
            "encode_passages": t_docs - t_load,
            "encode_queries": t_queries - t_docs,
            "search_and_score": t_end - t_queries,
            "total": t_end - t0,
        },
        info={
            "model": model_path or cfg.model.name,
            "data": str(cfg.data.path),
            "split": cfg.validation.split if subset is not None else cfg.data.split,
            "subset": subset is not None,
            "num_queries": len(split.query_ids),
            "num_docs": len(split.doc_ids),
            "device": str(retriever.device),
            "dtype": str(retriever.dtype).removeprefix("torch."),
            "index": cfg.index.backend
            + (f"-{cfg.index.faiss_type}" if cfg.index.backend == "faiss" else ""),
        },
    )
    result.per_query = per_query(split.qrels, run, [cfg.eval.primary_metric])[
        cfg.eval.primary_metric
    ]
    write_outputs(cfg.paths.run_dir, result, run if cfg.eval.write_run else None)
    return result


def _evaluate_scattered(cfg: RaydrConfig, model_path: str, shards: int) -> EvalResult:
    """``evaluate`` with the corpus split over ``shards`` tasks; the same metrics (the merged
    top-``depth`` is the corpus's), up to the float noise of other batch shapes."""
    from raydr.data.split import split_queries
    from raydr.data.store import PassageStore, ensure_passages
    from raydr.retrieval.metrics import score_run
    from raydr.validation.scatter import gather_run, scatter

    t0 = time.perf_counter()
    run = gather_run(cfg, scatter(cfg, model_path, shards, cfg.data.split, limit=False))
    t_run = time.perf_counter()
    q = split_queries(cfg.data.path, cfg.data.split)
    metrics, run = score_run(q["qrels"], run, cfg.eval)
    t_end = time.perf_counter()
    result = EvalResult(
        metrics=metrics,
        primary_metric=cfg.eval.primary_metric,
        timings={"scatter_and_gather": t_run - t0, "score": t_end - t_run, "total": t_end - t0},
        info={
            "model": model_path,
            "data": str(cfg.data.path),
            "split": cfg.data.split,
            "subset": False,
            "num_queries": len(q["query_ids"]),
            "num_docs": len(PassageStore(ensure_passages(cfg.data.path))),
            "shards": shards,
            "index": cfg.index.backend
            + (f"-{cfg.index.faiss_type}" if cfg.index.backend == "faiss" else ""),
        },
    )
    write_outputs(cfg.paths.run_dir, result, run if cfg.eval.write_run else None)
    return result


def evaluate_bm25(cfg: RaydrConfig, progress: bool = True) -> EvalResult:
    """The BM25 baseline on ``cfg.data.split``; writes its outputs under ``<run>/bm25``."""
    from raydr.retrieval.bm25 import bm25_run
    from raydr.retrieval.metrics import score_run

    t0 = time.perf_counter()
    split = load_split(cfg.data.path, cfg.data.split)
    run = bm25_run(
        split.passages,
        split.doc_ids,
        split.queries,
        split.query_ids,
        cfg.bm25,
        cfg.eval.depth,
        progress=progress,
    )
    metrics, run = score_run(split.qrels, run, cfg.eval)
    result = EvalResult(
        metrics=metrics,
        primary_metric=cfg.eval.primary_metric,
        timings={"total": time.perf_counter() - t0},
        info={
            "model": "bm25",
            "bm25": cfg.bm25.model_dump(),
            "data": str(cfg.data.path),
            "split": cfg.data.split,
            "num_queries": len(split.query_ids),
            "num_docs": len(split.doc_ids),
        },
    )
    write_outputs(cfg.paths.run_dir / "bm25", result, run, tag="bm25")
    return result


def write_outputs(run_dir: Path, result: EvalResult, run: dict | None, tag: str = "raydr") -> None:
    """``metrics.json`` (and ``run.trec``) in ``run_dir``, each written atomically."""
    if run is not None:
        write_trec_run(run_dir / "run.trec", run, tag=tag)
    atomic.write_json(run_dir / "metrics.json", result.to_json())


def format_table(result: EvalResult) -> str:
    """A short two-column table, primary metric first."""
    names = [result.primary_metric] + [m for m in result.metrics if m != result.primary_metric]
    width = max(len(n) for n in names)
    lines = [f"{n:<{width}}  {result.metrics[n]:.4f}" for n in names]
    return "\n".join(lines)
