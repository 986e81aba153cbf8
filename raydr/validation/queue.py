"""The pool's work queue: what is waiting, which validator is free, what runs, what is re-done.

Plain asyncio state inside the pool actor, with no Ray and no ledger: the pool decides what a
finished job writes; this module decides which job a free validator takes next (``pick``) and
whether a job whose validator died is tried again (``retry``). A checkpoint scattered over
several validators is several jobs, one per shard (``Job.part``), retried one by one.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any, Literal

from raydr.mining.dynamic import Kind

Order = Literal["rungs_first", "fifo"]
Key = tuple[str, int]  # (trial, step)
Slot = tuple[str, int, int | None]  # (trial, step, part)


@dataclass
class Job:
    """One unit of pool work: validate a checkpoint, rebuild a trial's mining index, or both."""

    trial: str
    step: int
    path: str
    validate: bool = True
    mine: Kind | None = None  # what the checkpoint does for the trial's mining index
    rung: bool = False  # a scheduler decides on this checkpoint's metric
    part: int | None = None  # which shard of a scattered validation (None: the whole job)
    parts: list | None = None  # a scattered refresh's shard embeddings (refs), to assemble
    seq: int = 0  # arrival order, set when queued

    @property
    def key(self) -> Key:
        return (self.trial, self.step)

    @property
    def slot(self) -> Slot:
        """What is retried on its own: one shard of a scattered checkpoint, else the job."""
        return (self.trial, self.step, self.part)


def pick(
    waiting: list[Job], served: dict[str, int], order: Order, started: frozenset[Key] = frozenset()
) -> Job:
    """The job a free validator takes. ``rungs_first``: checkpoints a scheduler is waiting on
    first (a decision there stops or keeps a whole trial); then the remaining shards of
    checkpoints already started (scattering is for one checkpoint's latency, so its shards do
    not wait behind other trials); then the trial served longest ago, so one trial's burst of
    checkpoints cannot starve the others; within a trial, the oldest (its metrics reach the
    scheduler in step order). ``served``: trial → when it was last served; ``started``:
    checkpoints with a shard running."""
    if order == "fifo":
        return min(waiting, key=lambda j: j.seq)
    return min(
        waiting,
        key=lambda j: (not j.rung, j.key not in started, served.get(j.trial, -1), j.seq),
    )


class WorkQueue:
    """Waiting jobs, free validators and the jobs running on them. Must be created inside the
    running event loop (the pool's)."""

    def __init__(self, actors: list[Any], order: Order, max_retries: int) -> None:
        self.order, self.max_retries = order, max_retries
        self.waiting: list[Job] = []
        self._running: Counter[Key] = Counter()  # jobs running per checkpoint (shards: several)
        self._attempts: dict[Slot, int] = {}  # validator deaths per job
        self._arrived = asyncio.Event()
        self._free: asyncio.Queue = asyncio.Queue()
        for actor in actors:
            self._free.put_nowait(actor)
        self._seq = 0
        self._served: dict[str, int] = {}  # trial → dispatch number when last served
        self._dispatched = 0

    def put(self, job: Job) -> None:
        self._seq += 1
        job.seq = self._seq
        self.waiting.append(job)
        self._arrived.set()

    async def take(self) -> tuple[Any, Job]:
        """Wait for a free validator, then for work; → (validator, the job it runs now).

        The validator first, then the best job at that moment: a rung checkpoint that arrives
        while every validator is busy still goes ahead of older work."""
        actor = await self._free.get()
        while not self.waiting:
            self._arrived.clear()
            await self._arrived.wait()
        job = pick(self.waiting, self._served, self.order, frozenset(self._running))
        self.waiting.remove(job)
        self._dispatched += 1
        self._served[job.trial] = self._dispatched
        self._running[job.key] += 1
        return actor, job

    @property
    def dispatched(self) -> int:
        """Jobs taken by validators so far."""
        return self._dispatched

    @property
    def running(self) -> set[Key]:
        """Checkpoints with a job running."""
        return set(self._running)

    def finished(self, actor: Any, job: Job) -> None:
        """``job`` is over, whatever its outcome; ``actor`` is free again."""
        self._running[job.key] -= 1
        if self._running[job.key] <= 0:
            del self._running[job.key]
        self._free.put_nowait(actor)

    def attempts(self, slot: Slot) -> int:
        """Times a validator died on the job (a checkpoint, or one of its shards) so far."""
        return self._attempts.get(slot, 0)

    def retry(self, job: Job) -> int | None:
        """The validator died on ``job``: queue it again unless it has died ``max_retries``
        times already. → the attempts so far when given up, None when queued again."""
        attempts = self._attempts[job.slot] = self.attempts(job.slot) + 1
        if attempts <= self.max_retries:
            self.put(replace(job))
            return None
        return attempts

    def drop(self, trial: str) -> list[Job]:
        """Remove and return every waiting job of ``trial`` (running ones finish)."""
        theirs = [job for job in self.waiting if job.trial == trial]
        self.waiting = [job for job in self.waiting if job.trial != trial]
        return theirs

    def steps(self, trial: str) -> set[int]:
        """Steps of ``trial`` waiting or running: checkpoints someone is about to read."""
        return {j.step for j in self.waiting if j.trial == trial} | {
            step for t, step in self._running if t == trial
        }

    def idle(self) -> bool:
        return not self.waiting and not self.running
