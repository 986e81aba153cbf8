"""Dense retrieval end to end: embed with a loaded dual encoder, index, search, score.

Shared by ``raydr evaluate``, the validators and the benchmarks, so they cannot disagree on how
a checkpoint is scored. Loading a model from a folder is the checkpoint module's job; this takes
the loaded model and its tokenizer.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from raydr.config import RaydrConfig
from raydr.retrieval.metrics import score_run


class DenseRetriever:
    """A dual encoder plus its tokenizer, on this process's device and dtype, ready to embed."""

    def __init__(self, model, tokenizer, cfg: RaydrConfig) -> None:
        import torch

        from raydr.model.encoder import pick_device, resolve_dtype

        self.cfg = cfg
        self.tokenizer = tokenizer
        self.device = pick_device()
        self.dtype = resolve_dtype(cfg.model.dtype, self.device)
        self.model = model.to(self.device).eval()
        if self.dtype == torch.bfloat16:
            # Inference only: bf16 weights beat bf16 autocast by 8-15% on this CPU (no per-call
            # weight casts) at cosine >= 0.9999 to fp32 (`raydr bench encode`).
            self.model = self.model.to(torch.bfloat16)

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
    """Index (N, D) docs, retrieve ``eval.depth`` for (Q, D) queries, score with ir-measures.

    → (flat metrics dict, the run as scored)."""
    from raydr.retrieval.index import build_index, retrieve

    index = build_index(doc_emb, cfg.index)
    run = retrieve(index, query_emb, query_ids, doc_ids, cfg.eval.depth)
    return score_run(qrels, run, cfg.eval)
