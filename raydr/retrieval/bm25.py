"""BM25 with bm25s: the lexical baseline, and later the source of BM25 pools and hard negatives."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from raydr.config import BM25Config


class BM25:
    """A bm25s index over ``texts``; ``search`` returns positions into them."""

    def __init__(self, texts: Sequence[str], cfg: BM25Config, progress: bool = False) -> None:
        import bm25s

        # bm25s sets its own logger to DEBUG when imported, past any level set beforehand.
        logging.getLogger("bm25s").setLevel(max(logging.WARNING, logging.getLogger().level))

        self.cfg = cfg
        self._progress = progress
        self._stemmer = _stemmer(cfg.stemmer)
        tokens = bm25s.tokenize(
            list(texts),
            stopwords=self._stopwords,
            stemmer=self._stemmer,
            show_progress=progress,
        )
        self.retriever = bm25s.BM25(k1=cfg.k1, b=cfg.b, method=cfg.method)
        self.retriever.index(tokens, show_progress=progress)
        self.size = len(texts)

    @property
    def _stopwords(self) -> str | list[str]:
        return [] if self.cfg.stopwords == "none" else self.cfg.stopwords

    def search(self, queries: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """→ scores (Q, k) float32, positions (Q, k) int64, best first."""
        import bm25s

        # Strings, not ids: bm25s then maps query words onto the corpus vocabulary itself.
        tokens = bm25s.tokenize(
            list(queries),
            stopwords=self._stopwords,
            stemmer=self._stemmer,
            return_ids=False,
            show_progress=False,
        )
        pos, scores = self.retriever.retrieve(
            tokens, k=min(k, self.size), show_progress=self._progress
        )
        return scores.astype(np.float32), pos.astype(np.int64)


def _stemmer(name: str):
    if name == "none":
        return None
    import Stemmer

    return Stemmer.Stemmer(name).stemWords


def bm25_run(
    texts: Sequence[str],
    doc_ids: Sequence[str],
    queries: Sequence[str],
    query_ids: Sequence[str],
    cfg: BM25Config,
    k: int,
    progress: bool = False,
) -> dict[str, dict[str, float]]:
    """BM25 top-k per query as a run ``{query_id: {doc_id: score}}``."""
    index = BM25(texts, cfg, progress=progress)
    scores, pos = index.search(queries, k)
    run: dict[str, dict[str, float]] = {}
    for qid, row_s, row_p in zip(query_ids, scores, pos, strict=True):
        # bm25s pads with score 0 when fewer docs match; a zero-score doc is not a match.
        run[qid] = {doc_ids[p]: float(s) for s, p in zip(row_s, row_p, strict=True) if s > 0}
    return run
