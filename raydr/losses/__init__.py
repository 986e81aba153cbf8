"""Losses over embeddings (never raw batches); one file per loss, named after its class."""

from __future__ import annotations

from raydr.losses.infonce import InfoNCELoss

__all__ = ["InfoNCELoss"]
