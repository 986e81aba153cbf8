"""Pooling token states into one vector per text."""

from __future__ import annotations

import torch


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average of the real (unmasked) token states. hidden (B, L, D), mask (B, L) → (B, D)."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    summed = (hidden * weights).sum(dim=1)
    # clamp: an all-padding row (never produced by the tokenizer) must not divide by zero.
    return summed / weights.sum(dim=1).clamp(min=1e-9)


def cls_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The first token's state. hidden (B, L, D) → (B, D)."""
    return hidden[:, 0]


POOLERS = {"mean": mean_pool, "cls": cls_pool}
