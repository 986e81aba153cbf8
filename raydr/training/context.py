"""What the trainer hands each worker's loop: the config, where checkpoints go, and a hook.

The loop knows nothing about validation or tuning. It calls a ``CheckpointHook`` that the layer
above supplies (``raydr.validation.client``: the pool client or the inline validator), draws
dynamic negatives from a ``NegativeSource`` the same layer supplies, and ships no untyped flags.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from raydr.config import RaydrConfig
from raydr.data.store import TrainingData
from raydr.tracking import TrackingRun


class CheckpointHook(Protocol):
    """Called on rank 0 only. Implementations must be picklable: Ray ships them to workers."""

    def on_checkpoint(self, step: int, uri: str) -> None:
        """Ray has committed the checkpoint of ``step`` at ``uri``. Must not wait for validation."""

    def progress(self, step: int) -> None:
        """Rank 0 finished optimizer step ``step``. Must not wait."""

    def hold(self, step: int) -> None:
        """Called on every rank after the checkpoint of ``step`` was handed over; returns when
        training may go on (at once, unless a scheduler wants this checkpoint's metric first)."""


class NegativeSource(Protocol):
    """Hard negatives that change while training runs (``raydr.validation.client``'s pool
    client). Every rank holds its own copy. Implementations must be picklable."""

    def poll(self) -> None:
        """Take a newer index if one has arrived. Must never wait."""

    def draw(
        self, query_id: str, exclude: Collection[int], n: int, rng: np.random.Generator
    ) -> list[int] | None:
        """``n`` distinct negatives for the query as passage positions (``raydr.data.store``),
        none of ``exclude`` (positions); None while no index."""

    def describe(self, step: int) -> dict[str, Any]:
        """Flat report fields: which index served the negatives and how stale it is."""


@dataclass(frozen=True)
class LoopContext:
    """Everything a worker's loop gets besides what ``ray.train.get_context()`` says."""

    cfg: RaydrConfig  # resolved once at the driver (local paths absolute); never re-validated
    storage: str  # Ray Train storage root: checkpoints land at <storage>/<name>/<dir_name>
    threads: int  # torch threads per worker (Ray starts workers with one)
    data: TrainingData  # the memory-mapped rows and passages (built by the driver)
    hook: CheckpointHook | None = None  # None: train without validation
    negatives: NegativeSource | None = None  # None: the static negatives of training.negatives
    tracking: TrackingRun | None = None  # None: no experiment tracking; else rank 0 logs reports
