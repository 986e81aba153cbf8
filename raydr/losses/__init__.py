"""Losses over embeddings (never raw batches); one file per loss, named after its class."""

from __future__ import annotations

from typing import TYPE_CHECKING

from raydr.losses.bank import MemoryBank
from raydr.losses.infonce import InfoNCELoss
from raydr.losses.margin import AdaptiveMarginLoss

if TYPE_CHECKING:
    from raydr.config import TrainingConfig

__all__ = ["AdaptiveMarginLoss", "InfoNCELoss", "MemoryBank", "build_loss"]


def build_loss(tcfg: TrainingConfig) -> InfoNCELoss | AdaptiveMarginLoss:
    """The loss ``training.loss`` names, with the training section's shared options."""
    lcfg = tcfg.loss
    if lcfg.type == "margin":
        return AdaptiveMarginLoss(lcfg.target, lcfg.in_batch, lcfg.error, tcfg.cross_batch)
    return InfoNCELoss(tcfg.temperature, tcfg.cross_batch)
