"""A warm validator: holds its queries, qrels and tokenised corpus subset; scores checkpoints.

One instance lives in one Ray actor (or, for inline validation, in training's rank 0).
Start-up (load data, tokenise the subset) happens once; each checkpoint then costs only: load
weights, encode, index, retrieve, score.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from raydr.config import RaydrConfig


class Validator:
    def __init__(self, config: dict[str, Any], subset: list[str] | None, threads: int = 1) -> None:
        import torch

        from raydr.data.split import load_split
        from raydr.dist import pin_cpus

        torch.set_num_threads(max(1, int(threads)))  # Ray actors start with one thread
        self.cfg = RaydrConfig.model_validate(config)
        vcfg = self.cfg.validation
        pin_cpus(vcfg.cpus)
        split = load_split(self.cfg.data.path, vcfg.split).limit_queries(vcfg.max_queries)
        self.split = split.restrict(subset) if subset is not None else split
        self._tokens: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {}

    def _tokenized(self, retriever) -> tuple[list[np.ndarray], list[np.ndarray]]:
        # Cache per vocabulary: every checkpoint of a run shares one tokenizer, so the subset is
        # tokenised once; a foreign model with another vocabulary gets its own entry.
        key = retriever.tokenizer_fingerprint()
        if key not in self._tokens:
            self._tokens[key] = (
                retriever.tokenize(self.split.passages, "passages"),
                retriever.tokenize(self.split.queries, "queries"),
            )
        return self._tokens[key]

    def _retriever(self, path: str):
        from raydr.retrieval.dense import DenseRetriever
        from raydr.training import checkpoint

        return DenseRetriever(*checkpoint.load(path, self.cfg.model), self.cfg)

    def ping(self) -> bool:
        return True

    def warm(self) -> int:
        """Tokenise the subset with the configured model's tokenizer now; → subset size."""
        self._tokenized(self._retriever(self.cfg.model.name))
        return len(self.split.doc_ids)

    def validate(self, path: str, step: int) -> dict[str, Any]:
        """Score the checkpoint of ``step`` at ``path``. → flat dict: metrics, the declared
        primary metric, timings, sizes.

        Raises RaydrError when the checkpoint cannot be loaded (recorded as failed upstream).
        """
        from raydr.retrieval.dense import search_and_score

        t0, started_at = time.perf_counter(), time.time()
        retriever = self._retriever(path)
        docs, queries = self._tokenized(retriever)
        t_load = time.perf_counter()
        bs = self.cfg.validation.batch_size
        doc_emb = retriever.embed_ids(docs, "passages", batch_size=bs)
        query_emb = retriever.embed_ids(queries, "queries", batch_size=bs)
        t_enc = time.perf_counter()
        metrics, run = search_and_score(
            self.cfg, doc_emb, query_emb, self.split.doc_ids, self.split.query_ids, self.split.qrels
        )
        t_end = time.perf_counter()
        self.last_run = run
        return {
            **metrics,
            "primary_metric": self.cfg.eval.primary_metric,
            "checkpoint_step": step,
            "subset_size": len(self.split.doc_ids),
            "num_queries": len(self.split.query_ids),
            "load_s": t_load - t0,
            "encode_s": t_enc - t_load,
            "search_s": t_end - t_enc,
            "validation_s": t_end - t0,
            "node_id": _node_id(),  # where it ran: placement is checkable from the ledger
            "started_at": started_at,
            "finished_at": time.time(),
        }

    def run_of_last(self) -> dict[str, dict[str, float]]:
        return self.last_run


def _node_id() -> str | None:
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
