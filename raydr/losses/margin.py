"""Self-distillation with adaptive relevance margins (Gienapp et al., ICTIR 2025, arXiv 2407.21515).

The encoder teaches itself: for a query q, its positive d⁺ and a negative d⁻, with cosine
similarity c, the *margin* m = c(q, d⁺) − c(q, d⁻) is regressed towards a target taken from the
same live encoder, t = (1 + c(d⁺, d⁻)) / 2: a negative that reads much like the positive earns a
small margin, an unrelated one a large margin. No teacher model, no temperature.

Batch layout as in ``raydr.losses.infonce``: q (B, D), p (B*G, D), query i owns rows
[i*G, (i+1)*G): its positive first, then G-1 hard negatives (G >= 2 here). Only the hard-negative
rows serve as negatives; other queries' positives never do.

Variants (the paper's):
- ``in_batch=False`` (pairwise): each query against its own G-1 negatives.
- ``in_batch=True``: each query against every hard negative of the batch (of every worker, with
  ``cross_batch``), each pair with its own margin and target.
- ``target="distributed"``: pairwise margins, each regressed towards the targets of its positive
  against every negative of the batch (a distribution of targets rather than one). The paper
  rules out combining it with ``in_batch``; so does this module.
- ``target=<float>``: a fixed margin, the non-adaptive baseline.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from raydr.dist import all_gather_no_grad, all_gather_with_grad, get_world_size

ErrorFn = Literal["squared", "absolute", "softplus"]
ERRORS: tuple[str, ...] = ("squared", "absolute", "softplus")


class AdaptiveMarginLoss(nn.Module):
    """Mean of err(margin − target) over (query, negative) pairs; see the module docstring."""

    def __init__(
        self,
        target: Literal["adaptive", "distributed"] | float = "adaptive",
        in_batch: bool = False,
        error: ErrorFn = "squared",
        cross_batch: bool = True,
    ) -> None:
        super().__init__()
        if error not in ERRORS:
            raise ValueError(f"error {error!r}: expected one of {', '.join(ERRORS)}")
        fixed = isinstance(target, (int, float)) and not isinstance(target, bool)
        if not fixed and target not in ("adaptive", "distributed"):
            raise ValueError(f"target {target!r}: expected 'adaptive', 'distributed' or a number")
        if target == "distributed" and in_batch:
            # The paper's rule: distributed targets already span the batch's negatives.
            raise ValueError("target 'distributed' cannot be combined with in_batch=True")
        self.target = float(target) if fixed else target
        self.in_batch = in_batch
        self.error = error
        self.cross_batch = cross_batch

    def extra_repr(self) -> str:
        return (
            f"target={self.target!r}, in_batch={self.in_batch}, error={self.error!r}, "
            f"cross_batch={self.cross_batch}"
        )

    def negatives_per_query(
        self, batch_size: int, group_size: int, world_size: int, bank: int = 0
    ) -> int:
        """Negatives each query's margins are taken against: G-1 pairwise, the batch's
        (all workers' with cross_batch) hard negatives in-batch."""
        if min(batch_size, world_size) < 1 or group_size < 2:
            raise ValueError(
                f"batch_size and world_size must be >= 1 and group_size >= 2, "
                f"got {batch_size}, {group_size}, {world_size}"
            )
        if not self.in_batch:
            return group_size - 1
        workers = world_size if self.cross_batch else 1
        return workers * batch_size * (group_size - 1)

    def forward(
        self,
        q: torch.Tensor,
        p: torch.Tensor,
        p_doc: torch.Tensor | None = None,
        q_pos: torch.Tensor | None = None,
        bank: object = None,
    ) -> torch.Tensor:
        """q (B, D), p (B*G, D), G >= 2 → scalar mean loss over this worker's pairs.

        With ``p_doc`` (B*G,) and ``q_pos`` (B, P, padded with -1) as for InfoNCE, an in-batch
        negative judged relevant to a query is left out of that query's pairs."""
        if bank is not None:
            raise ValueError("the margin loss takes no memory bank (it has no denominator)")
        b, g = _groups(q, p)
        q, p = F.normalize(q, dim=-1), F.normalize(p, dim=-1)  # cosine similarity
        groups = p.view(b, g, -1)
        pos, neg = groups[:, 0], groups[:, 1:]  # (B, D), (B, G-1, D)
        pos_score = (q * pos).sum(-1, keepdim=True)  # (B, 1)
        keep = None
        if self.in_batch or self.target == "distributed":
            batch_neg = neg.reshape(b * (g - 1), -1)  # (B*(G-1), D)
            neg_doc = None if p_doc is None else p_doc.view(b, g)[:, 1:].reshape(-1)
            if self.cross_batch and get_world_size() > 1:
                batch_neg = all_gather_with_grad(batch_neg)  # (W*B*(G-1), D)
                neg_doc = None if neg_doc is None else all_gather_no_grad(neg_doc)
            if self.in_batch and neg_doc is not None and q_pos is not None:
                keep = ~(neg_doc[None, :, None] == q_pos[:, None, :]).any(-1)  # (B, N)
        if self.in_batch:
            margin = pos_score - q @ batch_neg.T  # (B, N)
            pos_neg = pos @ batch_neg.T  # (B, N)
        else:
            margin = pos_score - torch.einsum("bd,bkd->bk", q, neg)  # (B, G-1)
            pos_neg = torch.einsum("bd,bkd->bk", pos, neg)  # (B, G-1)
        if isinstance(self.target, float):
            diff = margin - self.target
        elif self.target == "adaptive":
            diff = margin - (1 + pos_neg) / 2
        else:  # distributed: each pairwise margin against its positive's targets over the batch
            targets = (1 + pos @ batch_neg.T) / 2  # (B, N)
            diff = margin.unsqueeze(-1) - targets.unsqueeze(1)  # (B, G-1, N)
        errors = _error(diff, self.error)
        if keep is not None:
            # A batch whose every negative is judged relevant gives no evidence: 0, never the
            # NaN of an empty mean (DDP would all-reduce it into every worker's weights).
            return errors[keep].sum() / keep.sum().clamp(min=1)
        return errors.mean()


def _error(x: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "squared":
        return x.square()
    if kind == "absolute":
        return x.abs()
    # softplus(-x) = log(1 + e^-x): one-sided, a margin above its target costs almost nothing.
    return F.softplus(-x)


def _groups(q: torch.Tensor, p: torch.Tensor) -> tuple[int, int]:
    """(B, G) from q (B, D) and p (B*G, D) with G >= 2; ValueError naming both shapes."""
    shapes = f"q {tuple(q.shape)} and p {tuple(p.shape)}"
    if q.dim() != 2 or p.dim() != 2 or q.shape[1] != p.shape[1]:
        raise ValueError(f"margin loss expects q (B, D) and p (B*G, D), same D; got {shapes}")
    b = q.shape[0]
    if b == 0 or p.shape[0] % b or p.shape[0] // b < 2:
        raise ValueError(
            f"margin loss expects a positive and >= 1 hard negative per query (p = B*G rows, "
            f"G >= 2); got {shapes}"
        )
    return b, p.shape[0] // b
