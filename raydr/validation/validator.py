"""A warm validator: holds its queries, qrels and tokenised corpus subset; scores checkpoints.

One instance lives in one Ray actor. Start-up (load data, tokenise the subset) happens once;
each checkpoint then costs only: load weights, encode, index, retrieve, score.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from raydr.config import RaydrConfig


def step_of(path: str | Path) -> int:
    """The training step of a checkpoint: raydr.json, else the last number in its name."""
    from raydr.training import checkpoint

    path = Path(path)
    if (path / checkpoint.META).exists():
        return checkpoint.read(path).step
    numbers = re.findall(r"\d+", path.name)
    return int(numbers[-1]) if numbers else 0


class Validator:
    def __init__(self, config: dict[str, Any], subset: list[str] | None, threads: int = 1) -> None:
        import torch

        from raydr.evaluate import load_split
        from raydr.training.loop import pin_cpus

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

    def ping(self) -> bool:
        return True

    def warm(self) -> int:
        """Tokenise the subset with the configured model's tokenizer now; → subset size."""
        from raydr.evaluate import DenseRetriever

        self._tokenized(DenseRetriever(self.cfg))
        return len(self.split.doc_ids)

    def validate(self, path: str) -> dict[str, Any]:
        """Score the checkpoint at ``path``. → flat dict: metrics, timings, sizes, step.

        Raises RaydrError when the checkpoint cannot be loaded (recorded as failed upstream).
        """
        from raydr.evaluate import search_and_score
        from raydr.training import checkpoint

        t0, started_at = time.perf_counter(), time.time()
        if (Path(path) / checkpoint.META).exists():
            checkpoint.read(path)  # a complete raydr checkpoint, or a clear error
        retriever = _load(self.cfg, path)
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
            "checkpoint_step": step_of(path),
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


def _load(cfg: RaydrConfig, path: str):
    from raydr.errors import RaydrError
    from raydr.evaluate import DenseRetriever

    try:
        return DenseRetriever(cfg, path)
    except RaydrError:
        raise
    except Exception as exc:  # truncated safetensors, foreign configs, missing tokenizer, ...
        raise RaydrError(f"{path}: cannot load checkpoint ({type(exc).__name__}: {exc})") from None
