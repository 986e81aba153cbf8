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

    def restrict(self, doc_ids: list[str]) -> Split:
        """The same queries over only ``doc_ids`` (kept in corpus order)."""
        keep = set(doc_ids)
        unknown = keep.difference(self.doc_ids)
        if unknown:
            from raydr.errors import RaydrError

            raise RaydrError(
                f"subset names {len(unknown)} doc ids not in the corpus, e.g. {sorted(unknown)[:3]}"
            )
        rows = [i for i, d in enumerate(self.doc_ids) if d in keep]
        return Split(
            doc_ids=[self.doc_ids[i] for i in rows],
            passages=[self.passages[i] for i in rows],
            query_ids=self.query_ids,
            queries=self.queries,
            qrels=self.qrels,
        )

    def limit_queries(self, n: int | None) -> Split:
        """The first ``n`` queries in id order (all when ``n`` is None)."""
        if n is None or n >= len(self.query_ids):
            return self
        ids = self.query_ids[:n]
        return Split(
            self.doc_ids, self.passages, ids, self.queries[:n], {q: self.qrels[q] for q in ids}
        )


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
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(tok_path)
        except (OSError, ValueError):
            # A bare weights folder from another trainer: fall back to the configured model's.
            self.tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(cfg.model.name))
        self.model = DualEncoder.from_config(cfg.model, path).to(self.device).eval()
        if self.dtype == torch.bfloat16:
            # Inference only: bf16 weights beat bf16 autocast by 8-15% on this CPU (no per-call
            # weight casts) at cosine >= 0.9999 to fp32 (`raydr bench encode`).
            self.model = self.model.to(torch.bfloat16)
        self._torch = torch

    def tokenize(self, texts: list[str], side: str) -> list[np.ndarray]:
        """Token ids per text for ``side`` ("passages" or "queries"), unpadded."""
        from raydr.retrieval.encode import tokenize

        m = self.cfg.model
        max_len = m.passage_max_length if side == "passages" else m.query_max_length
        return tokenize(self.tokenizer, texts, max_len)

    def embed_ids(
        self,
        ids: list[np.ndarray],
        side: str,
        progress: bool = False,
        batch_size: int | None = None,
    ) -> np.ndarray:
        """Pre-tokenised texts → (N, D) float32."""
        from raydr.retrieval.encode import encode

        fn = self.model.encode_passages if side == "passages" else self.model.encode_queries
        return encode(
            fn,
            ids,
            pad_id=self.tokenizer.pad_token_id or 0,
            batch_size=batch_size or self.cfg.eval.batch_size,
            device=self.device,
            dtype=self.dtype,
            progress=progress,
            desc=f"encode {side}",
        )

    def embed(
        self, texts: list[str], side: str, progress: bool = False, batch_size: int | None = None
    ) -> np.ndarray:
        """Texts → (N, D) float32."""
        return self.embed_ids(self.tokenize(texts, side), side, progress, batch_size)

    def tokenizer_fingerprint(self) -> str:
        """Changes when the vocabulary does: cached token ids are reusable while it holds."""
        import hashlib
        import json

        vocab = sorted(self.tokenizer.get_vocab().items())
        return hashlib.sha1(json.dumps(vocab).encode()).hexdigest()


def search_and_score(
    cfg: RaydrConfig,
    doc_emb: np.ndarray,
    query_emb: np.ndarray,
    doc_ids: list[str],
    query_ids: list[str],
    qrels: dict[str, dict[str, int]],
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Index, retrieve ``eval.depth``, score with ir-measures. → (metrics, run)."""
    from raydr.retrieval.index import build_index, retrieve

    index = build_index(doc_emb, cfg.index)
    run = retrieve(index, query_emb, query_ids, doc_ids, cfg.eval.depth)
    if cfg.eval.ignore_identical_ids:
        run = drop_identical_ids(run)
    return score(qrels, run, cfg.eval.metrics), run


def evaluate(
    cfg: RaydrConfig,
    model_path: str | None = None,
    progress: bool = True,
    subset: list[str] | None = None,
) -> EvalResult:
    """Score ``model_path`` (default: ``cfg.model.name``) on ``cfg.data``; write outputs.

    ``subset`` restricts the corpus to those doc ids (a validation subset, for comparison).
    """
    t0 = time.perf_counter()
    batch_size = None
    if subset is not None:  # score exactly as the validators do: their queries, their docs
        split = load_split(cfg.data.path, cfg.validation.split)
        split = split.limit_queries(cfg.validation.max_queries).restrict(subset)
        # Their batch size too: bf16 results shift with padding (nDCG@10 by ~1e-4 on SciFact).
        batch_size = cfg.validation.batch_size
    else:
        split = load_split(cfg.data.path, cfg.data.split)
    retriever = DenseRetriever(cfg, model_path)
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
