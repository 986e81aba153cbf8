"""Where a trial's dynamic-negatives index is published, and what each checkpoint does for it.

The pool keeps one ``Publication`` per trial that mines dynamically. Each checkpoint either
re-encodes the whole training corpus (a refresh, every ``refresh_every`` steps) or, between
refreshes, Nyström-corrects the last refresh from a few landmarks (Monath et al. 2023). The
newest index is held as an ObjectRef: an object in Ray's store is immutable, and publishing
replaces a (step, ref) pair in one assignment, so a reader holds the old index or the new one,
never a mix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from raydr.config import MiningConfig
from raydr.mining.dynamic import Kind


@dataclass
class Publication:
    """One trial's dynamic-negatives state."""

    settings: MiningConfig  # the trial's training.mining
    planned: int = 0  # step of the newest refresh queued (0: the initial model's)
    base: tuple[int, Any] | None = None  # the newest full refresh: what Nyström corrects
    published: tuple[int, Any] | None = None  # the newest index, refreshed or corrected

    def plan(self, step: int) -> Kind | None:
        """What a checkpoint at ``step`` does for mining: a full refresh once ``refresh_every``
        steps have passed since the last one, else a Nyström correction (if landmarks)."""
        if step - self.planned >= self.settings.refresh_every:
            self.planned = step
            return "refresh"
        return "nystrom" if self.settings.landmarks else None

    def publish(self, step: int, ref: Any, kind: Kind) -> None:
        # Out-of-order finishes (two validators) never replace a newer index with an older one.
        if kind == "refresh" and (self.base is None or step > self.base[0]):
            self.base = (step, ref)
        if self.published is None or step > self.published[0]:
            self.published = (step, ref)

    def newer_than(self, have_step: int) -> tuple[int, Any] | None:
        """The newest index as (step, ref) if newer than ``have_step``, else None."""
        if self.published is None or self.published[0] <= have_step:
            return None
        return self.published
