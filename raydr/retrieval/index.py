"""Inner-product search behind one small interface: faiss (flat / IVF / HNSW) or hnswlib.

Embeddings are L2-normalised by default, so inner product is cosine similarity.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from raydr.config import IndexConfig

log = logging.getLogger(__name__)


class Index(Protocol):
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """queries (Q, D) float32 → scores (Q, k) float32, positions (Q, k) int64 (-1: none)."""
        ...


class FaissIndex:
    def __init__(self, emb: np.ndarray, cfg: IndexConfig) -> None:
        import faiss

        n, dim = emb.shape
        if cfg.faiss_type == "flat":
            index = faiss.IndexFlatIP(dim)
        elif cfg.faiss_type == "hnsw":
            index = faiss.IndexHNSWFlat(dim, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = cfg.ef_construction
            index.hnsw.efSearch = cfg.ef_search
        else:
            # faiss wants ~39 training points per list; small corpora get fewer lists.
            nlist = max(1, min(cfg.nlist, n // 39))
            quantizer = faiss.IndexFlatIP(dim)
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
            index.train(emb)
            index.nprobe = min(cfg.nprobe, nlist)
            self._quantizer = quantizer  # faiss does not own it; keep it alive
        want_gpu = cfg.use_gpu == "yes" or (cfg.use_gpu == "auto" and _faiss_gpus() > 0)
        if want_gpu and cfg.faiss_type != "hnsw":  # faiss has no GPU HNSW
            index = faiss.index_cpu_to_all_gpus(index)
        index.add(emb)
        self.index = index
        self.size = n

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores, pos = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return scores, pos.astype(np.int64)


class HnswlibIndex:
    def __init__(self, emb: np.ndarray, cfg: IndexConfig) -> None:
        import hnswlib

        n, dim = emb.shape
        index = hnswlib.Index(space="ip", dim=dim)
        index.init_index(max_elements=n, ef_construction=cfg.ef_construction, M=cfg.hnsw_m)
        index.add_items(emb, np.arange(n))
        self.index = index
        self.ef_search = cfg.ef_search
        self.size = n

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        # hnswlib needs ef >= k to return k results.
        self.index.set_ef(max(self.ef_search, k))
        labels, dist = self.index.knn_query(np.ascontiguousarray(queries, dtype=np.float32), k=k)
        return (1.0 - dist).astype(np.float32), labels.astype(np.int64)  # "ip" distance = 1 - ip


def _faiss_gpus() -> int:
    import faiss

    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


def build_index(emb: np.ndarray, cfg: IndexConfig) -> Index:
    """Index (N, D) float32 embeddings with the configured backend."""
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    if emb.ndim != 2 or len(emb) == 0:
        raise ValueError(f"expected a non-empty (N, D) array, got shape {emb.shape}")
    return FaissIndex(emb, cfg) if cfg.backend == "faiss" else HnswlibIndex(emb, cfg)


def retrieve(
    index: Index,
    query_emb: np.ndarray,
    query_ids: Sequence[str],
    doc_ids: Sequence[str],
    k: int,
    batch_size: int = 4096,
) -> dict[str, dict[str, float]]:
    """Top-k per query as a run: ``{query_id: {doc_id: score}}``."""
    k = min(k, len(doc_ids))
    run: dict[str, dict[str, float]] = {}
    for start in range(0, len(query_ids), batch_size):
        scores, pos = index.search(query_emb[start : start + batch_size], k)
        for qid, row_s, row_p in zip(
            query_ids[start : start + batch_size], scores, pos, strict=True
        ):
            run[qid] = {doc_ids[p]: float(s) for s, p in zip(row_s, row_p, strict=True) if p >= 0}
    return run
