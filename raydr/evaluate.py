"""``raydr evaluate``: encode corpus and queries, index, retrieve, score, write metrics and run.

The pieces (``load_split``, ``DenseRetriever``) are shared with the asynchronous validators, so
validation and evaluation cannot disagree on how a checkpoint is scored.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from raydr import atomic
from raydr.config import RaydrConfig
from raydr.validation.metrics import drop_identical_ids, score, write_trec_run

log = logging.getLogger(__name__)


@dataclass
class Split:
    """One evaluation split: the judged queries and the corpus they are searched in."""

    doc_ids: list[str]
    passages: list[str]
    query_ids: list[str]
    queries: list[str]
    qrels: dict[str, dict[str, int]]


def load_split(data_dir: str | Path, split: str) -> Split:
    """Queries are those judged in ``split``, in id order; the corpus is whole."""
    from raydr.data.tables import load_corpus, load_qrels, load_queries
    from raydr.data.text import passage_texts

    corpus = load_corpus(data_dir)
    qrels = load_qrels(data_dir, split)
    queries = load_queries(data_dir)
    text_of = dict(
        zip(queries.column("query_id").to_pylist(), queries.column("text").to_pylist(), strict=True)
    )
    query_ids = sorted(q for q in qrels if q in text_of)
    return Split(
        doc_ids=corpus.column("doc_id").to_pylist(),
        passages=passage_texts(corpus),
        query_ids=query_ids,
        queries=[text_of[q] for q in query_ids],
        qrels={q: qrels[q] for q in query_ids},
    )


@dataclass
class EvalResult:
    metrics: dict[str, float]
    primary_metric: str
    timings: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "metrics": self.metrics,
            "primary_metric": self.primary_metric,
            "timings_s": self.timings,
            **self.info,
        }


class DenseRetriever:
    """A loaded dual encoder plus its tokenizer, device and dtype, ready to embed texts."""

    def __init__(self, cfg: RaydrConfig, model_path: str | None = None) -> None:
        import torch
        from transformers import AutoTokenizer

        from raydr.model.encoder import DualEncoder, pick_device, resolve_dtype, resolve_model_path

        self.cfg = cfg
        path = resolve_model_path(model_path or cfg.model.name)
        self.device = pick_device()
        self.dtype = resolve_dtype(cfg.model.dtype, self.device)
        # A two-tower save keeps its tokenizer beside the query tower.
        tok_path = str(Path(path) / "query") if (Path(path) / "query").is_dir() else path
        self.tokenizer = AutoTokenizer.from_pretrained(tok_path)
        self.model = DualEncoder.from_config(cfg.model, path).to(self.device).eval()
        if self.dtype == torch.bfloat16:
            # Inference only: bf16 weights beat bf16 autocast by 8-15% on this CPU (no per-call
            # weight casts) at cosine >= 0.9999 to fp32 (`raydr bench encode`).
            self.model = self.model.to(torch.bfloat16)
        self._torch = torch

    def embed_passages(self, texts: list[str], progress: bool = False) -> np.ndarray:
        """→ (N, D) float32."""
        return self._embed(texts, self.cfg.model.passage_max_length, "passages", progress)

    def embed_queries(self, texts: list[str], progress: bool = False) -> np.ndarray:
        """→ (Q, D) float32."""
        return self._embed(texts, self.cfg.model.query_max_length, "queries", progress)

    def _embed(self, texts: list[str], max_len: int, side: str, progress: bool) -> np.ndarray:
        from raydr.retrieval.encode import encode, tokenize

        fn = self.model.encode_passages if side == "passages" else self.model.encode_queries
        return encode(
            fn,
            tokenize(self.tokenizer, texts, max_len),
            pad_id=self.tokenizer.pad_token_id or 0,
            batch_size=self.cfg.eval.batch_size,
            device=self.device,
            dtype=self.dtype,
            progress=progress,
            desc=f"encode {side}",
        )


def evaluate(cfg: RaydrConfig, model_path: str | None = None, progress: bool = True) -> EvalResult:
    """Score ``model_path`` (default: ``cfg.model.name``) on ``cfg.data``; write outputs."""
    from raydr.retrieval.index import build_index, retrieve

    t0 = time.perf_counter()
    split = load_split(cfg.data.path, cfg.data.split)
    retriever = DenseRetriever(cfg, model_path)
    t_load = time.perf_counter()
    doc_emb = retriever.embed_passages(split.passages, progress)
    t_docs = time.perf_counter()
    query_emb = retriever.embed_queries(split.queries, progress)
    t_queries = time.perf_counter()
    index = build_index(doc_emb, cfg.index)
    run = retrieve(index, query_emb, split.query_ids, split.doc_ids, cfg.eval.depth)
    if cfg.eval.ignore_identical_ids:
        run = drop_identical_ids(run)
    t_search = time.perf_counter()
    metrics = score(split.qrels, run, cfg.eval.metrics)
    t_end = time.perf_counter()
    result = EvalResult(
        metrics=metrics,
        primary_metric=cfg.eval.primary_metric,
        timings={
            "load": t_load - t0,
            "encode_passages": t_docs - t_load,
            "encode_queries": t_queries - t_docs,
            "index_and_search": t_search - t_queries,
            "score": t_end - t_search,
            "total": t_end - t0,
        },
        info={
            "model": model_path or cfg.model.name,
            "data": str(cfg.data.path),
            "split": cfg.data.split,
            "num_queries": len(split.query_ids),
            "num_docs": len(split.doc_ids),
            "device": str(retriever.device),
            "dtype": str(retriever.dtype).removeprefix("torch."),
            "index": cfg.index.backend
            + (f"-{cfg.index.faiss_type}" if cfg.index.backend == "faiss" else ""),
        },
    )
    write_outputs(cfg.run_dir, result, run if cfg.eval.write_run else None)
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
