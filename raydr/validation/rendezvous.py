"""Where a search's trials meet the scheduler, inside the pool actor: heartbeats, long-polls for
closing rows, and the rung-release barrier.

- rank 0 of each trial beats its newest finished step here (``heartbeat``): where a stopped
  trial really was, and the step a delivered metric is reported at;
- a trial's courier long-polls for rows as they close (``landed``): the one path by which a
  validated metric reaches Tune;
- a trial paused at a scheduler rung waits (``wait_released``) until the driver's scheduler has
  decided on that rung's metric (``release``).

Every long poll sleeps on one shared event that is set, and replaced, whenever a row closes or a
rung opens (``signal``); each waiter then re-checks its own condition.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from raydr.validation.ledger import CLOSED, Key, Row

State = Callable[[], dict[Key, Row]]  # the ledger's latest row per checkpoint


class Rendezvous:
    """Must be created inside the running event loop (the pool's)."""

    def __init__(self, state: State) -> None:
        self._state = state
        self._changed = asyncio.Event()
        self._progress: dict[str, int] = {}  # trial → the newest step rank 0 finished
        self._released: dict[str, int] = {}  # trial → newest validated step the scheduler passed

    def signal(self) -> None:
        """A row closed or a rung opened: wake every long poll at once."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait_change(self, deadline: float) -> bool:
        """Sleep until the next ``signal``, or ``deadline``; → False on the deadline."""
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        try:
            await asyncio.wait_for(self._changed.wait(), left)
        except TimeoutError:
            return False
        return True

    def heartbeat(self, trial: str, step: int) -> None:
        self._progress[trial] = max(int(step), self._progress.get(trial, -1))

    def progress(self) -> dict[str, int]:
        return dict(self._progress)

    async def landed(self, trial: str, after: int, timeout_s: float) -> dict[str, Any]:
        """Closing rows of ``trial`` above step ``after``, by step, as soon as there is one (up
        to ``timeout_s`` for the next). → {"rows": [...], "step": the trial's newest finished
        step, -1 before its first}."""
        deadline = time.monotonic() + timeout_s
        while True:
            closed = sorted(
                (
                    r
                    for (t, s), r in self._state().items()
                    if t == trial and s > after and r["status"] in CLOSED
                ),
                key=lambda r: r["step"],
            )
            if closed or not await self._wait_change(deadline):
                return {"rows": closed, "step": self._progress.get(trial, -1)}

    def release(self, trial: str, step: int) -> None:
        self._released[trial] = max(int(step), self._released.get(trial, -1))
        self.signal()

    async def wait_released(self, trial: str, step: int, timeout_s: float) -> bool:
        """True once the scheduler has passed ``trial`` on a metric of ``step`` or later, or the
        checkpoint failed validation (no metric will come to decide on); False after
        ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self._released.get(trial, -1) >= step:
                return True
            if self._state().get((trial, int(step)), {}).get("status") == "failed":
                return True
            if not await self._wait_change(deadline):
                return False
