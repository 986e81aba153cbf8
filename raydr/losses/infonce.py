"""InfoNCE over in-batch (and, across workers, cross-batch) passages with hard negatives.

Batch layout (Tevatron convention), stated once for all losses here: ``q`` is (B, D), one row
per query; ``p`` is (B*G, D) where query i owns rows ``[i*G, (i+1)*G)``: its positive first,
then its G-1 hard negatives. So within one batch the target of query i is ``i * G``, and every
other passage in the batch (other queries' positives and negatives) is a negative for it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from raydr.dist import (
    all_gather_no_grad,
    all_gather_sizes,
    all_gather_with_grad,
    get_rank,
    get_world_size,
)
from raydr.losses.bank import MemoryBank


class InfoNCELoss(nn.Module):
    """Cross-entropy of each query's scores against its positive, scores = q·p / temperature.

    With ``cross_batch`` the passages of all workers are gathered (with gradients), so each
    query is scored against W*B*G passages instead of B*G. Every worker scores only its own
    queries; all workers must use the same B and G.
    """

    def __init__(self, temperature: float = 0.05, cross_batch: bool = True) -> None:
        super().__init__()
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
            raise ValueError(f"temperature must be a number, got {temperature!r}")
        if not temperature > 0:  # also rejects NaN
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        if not isinstance(cross_batch, bool):
            raise ValueError(f"cross_batch must be True or False, got {cross_batch!r}")
        self.temperature = float(temperature)
        self.cross_batch = cross_batch

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, cross_batch={self.cross_batch}"

    def negatives_per_query(
        self, batch_size: int, group_size: int, world_size: int, bank: int = 0
    ) -> int:
        """Scored negatives per query: W*B*G - 1 with cross batch, B*G - 1 without, plus the
        ``bank`` rows in use."""
        if min(batch_size, group_size, world_size) < 1:
            raise ValueError(
                f"batch_size, group_size and world_size must be >= 1, "
                f"got {batch_size}, {group_size}, {world_size}"
            )
        workers = world_size if self.cross_batch else 1
        return workers * batch_size * group_size - 1 + bank

    def forward(
        self,
        q: torch.Tensor,
        p: torch.Tensor,
        p_doc: torch.Tensor | None = None,
        q_pos: torch.Tensor | None = None,
        bank: MemoryBank | None = None,
    ) -> torch.Tensor:
        """q (B, D), p (B*G, D) in the module's batch layout → scalar mean loss over B queries.

        False negatives: with ``p_doc`` (B*G,) the doc index of each passage and ``q_pos``
        (B, P) each query's judged-relevant doc indices (padded with -1), a passage judged
        relevant to a query is never one of its negatives (a duplicate positive elsewhere in the
        batch, or in the bank); only its own target counts. ``bank``: extra negatives, no
        gradient, appended after the batch's passages.
        """
        b, g = _group_size(q, p)
        docs = p_doc
        if self.cross_batch and get_world_size() > 1:
            _check_same_layout(b, g, q.device)
            passages = all_gather_with_grad(p)  # (W*B*G, D), rank r's rows at [r*B*G, (r+1)*B*G)
            docs = None if p_doc is None else all_gather_no_grad(p_doc)
            first_query = get_rank() * b  # this worker's queries in the global query order
        else:
            passages, first_query = p, 0
        scores = q @ passages.T / self.temperature  # (B, W*B*G) or (B, B*G)
        if bank is not None and len(bank):
            scores = torch.cat([scores, q @ bank.emb.to(q.dtype).T / self.temperature], dim=1)
            docs = None if docs is None else torch.cat([docs, bank.doc])
        targets = (first_query + torch.arange(b, device=q.device)) * g
        if q_pos is not None and docs is not None:
            judged = (docs[None, :, None] == q_pos[:, None, :]).any(-1)  # (B, N)
            judged[torch.arange(b, device=q.device), targets] = False
            scores = scores.masked_fill(judged, float("-inf"))
        # No rescaling under DDP: gather's backward sums passage gradients back to their owners
        # and DDP averages over W workers, so the mean of per-worker losses is the global loss.
        return F.cross_entropy(scores, targets)


def _group_size(q: torch.Tensor, p: torch.Tensor) -> tuple[int, int]:
    """(B, G) from q (B, D) and p (B*G, D); ValueError naming both shapes if they don't fit."""
    shapes = f"q {tuple(q.shape)} and p {tuple(p.shape)}"
    if q.dim() != 2 or p.dim() != 2 or q.shape[1] != p.shape[1]:
        raise ValueError(f"InfoNCE expects q (B, D) and p (B*G, D) with the same D; got {shapes}")
    b = q.shape[0]
    if b == 0 or p.shape[0] == 0 or p.shape[0] % b:
        raise ValueError(
            f"InfoNCE expects p to hold G >= 1 passages per query, i.e. a multiple of q's "
            f"rows; got {shapes}"
        )
    return b, p.shape[0] // b


def _check_same_layout(b: int, g: int, device: torch.device) -> None:
    """Raise on every rank (no hang) unless all ranks hold the same (B, G).

    Checked before the big gather: the targets assume rank r's passages start at row r*B*G,
    which only holds when the gathered size is W*B*G with the same B everywhere.
    """
    sizes = all_gather_sizes((b, g), device)
    if any(s != (b, g) for s in sizes):
        per_rank = ", ".join(f"rank {r}: B={s[0]} G={s[1]}" for r, s in enumerate(sizes))
        raise ValueError(
            f"cross-batch InfoNCE needs the same batch size B and group size G on every worker "
            f"(gathered passages must be world_size*B*G rows); got {per_rank}. "
            f"Drop the last incomplete batch or use cross_batch=False."
        )
