"""A cross-batch memory bank (Wang et al., SIGIR 2021): the passage embeddings of recent steps,
from every worker, kept without gradient as extra negatives for InfoNCE.

Embeddings drift as the encoder trains, so the bank only joins the loss after ``warmup_steps``
and keeps the newest ``size`` passages (first in, first out). Every worker pushes the gathered
passages of all workers, so every rank holds the same bank: rank 0's copy in the checkpoint
restores all of them, and a resumed run sees the bank the uninterrupted run saw.
"""

from __future__ import annotations

from typing import Any

import torch

from raydr.dist import all_gather_no_grad


class MemoryBank:
    """FIFO of (embedding, doc index) rows; newest last. ``emb`` (K, D), ``doc`` (K,), K <= size."""

    def __init__(self, size: int, warmup_steps: int = 0) -> None:
        if size < 1 or warmup_steps < 0:
            raise ValueError(
                f"memory bank: size >= 1 and warmup_steps >= 0, got {size}, {warmup_steps}"
            )
        self.size = size
        self.warmup_steps = warmup_steps
        self.emb: torch.Tensor | None = None
        self.doc: torch.Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.doc is None else int(self.doc.shape[0])

    def active(self, step: int) -> bool:
        """Whether the bank joins the loss of ``step`` (1-based): past warm-up and not empty."""
        return step > self.warmup_steps and len(self) > 0

    def newest(self, n: int) -> MemoryBank:
        """The newest ``n`` rows (all there are, if fewer), as a bank sharing this one's tensors."""
        view = MemoryBank(max(1, n), self.warmup_steps)
        if self.doc is not None and n > 0:
            view.emb, view.doc = self.emb[-n:], self.doc[-n:]
        return view

    def push(self, p: torch.Tensor, doc: torch.Tensor) -> None:
        """Append this step's passages, p (N, D) and doc (N,), of every worker (gathered here,
        no gradient), dropping the oldest rows beyond ``size``."""
        p = all_gather_no_grad(p.detach().float())
        doc = all_gather_no_grad(doc)
        if self.doc is not None:
            p, doc = torch.cat([self.emb, p]), torch.cat([self.doc, doc])
        self.emb, self.doc = p[-self.size :], doc[-self.size :]

    def state_dict(self) -> dict[str, Any]:
        return {"emb": self.emb, "doc": self.doc}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        if state.get("doc") is None:
            return
        self.emb, self.doc = state["emb"].to(device), state["doc"].to(device)
        self.emb, self.doc = self.emb[-self.size :], self.doc[-self.size :]
