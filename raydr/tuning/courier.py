"""A trial's courier: hands each validated metric to Tune as soon as the pool records it.

It is the one path by which a validated metric reaches the scheduler. A metric riding rank 0's
next checkpoint report (how raydr once delivered them) arrives one or more checkpoint intervals
late wherever validating a checkpoint takes longer than an interval, or after the trial's last
report, and ASHA then stops nothing.

Why the Tune function, not rank 0: the metric lands in the pool, which is independent of the
training loop, so it is delivered while training is slow, restarting, or paused at a rung, and
the loop stays free of Tune. Why through the session's inter-actor queue: a Tune function's
thread may not call ``tune.report`` while its main thread blocks in ``fit`` (the two would race
for the session's one continue-lock); the queue is the channel Ray's own ``TuneReportCallback``
uses, and the session's main thread turns each item into a report, in order.
"""

from __future__ import annotations

import logging
import threading
import time

from raydr.errors import RaydrError
from raydr.validation.ledger import report_metrics

log = logging.getLogger(__name__)


def tune_channel():
    """The Tune session's inter-actor report queue (a private Ray API: it is what Ray's own
    ``TuneReportCallback`` uses). Raises RaydrError where this Ray has none."""
    try:
        from ray.train._internal.session import get_session

        return get_session()._get_or_create_inter_actor_queue()
    except (ImportError, AttributeError) as exc:
        import ray

        raise RaydrError(
            f"Ray {ray.__version__} has no report channel for a Tune function's threads "
            f"({exc}): raydr's searches need one to hand validated metrics to the scheduler; "
            f"use the Ray version pyproject.toml names"
        ) from None


class Courier(threading.Thread):
    """Long-polls the pool for ``trial``'s newly closed ledger rows and puts each validated
    metric, projected as a report (``ledger.report_metrics``), into Tune's channel. Rows are
    delivered in step order; a row below one already delivered (validators finishing out of
    order) is skipped, so the scheduler's time attribute never goes back."""

    def __init__(self, pool, trial: str, metrics: list[str], channel) -> None:
        super().__init__(name=f"raydr-courier-{trial}", daemon=True)
        self.pool, self.trial, self.metrics, self.channel = pool, trial, metrics, channel
        self.delivered = -1  # newest validated step handed to Tune
        self.closed = -1  # newest step with a closing row seen (done or failed)
        self.final_step: int | None = None  # set once training is over: reports carry it
        # Not ``_stop``: Thread.join calls its own private ``_stop()`` once the thread has ended.
        self._halt = threading.Event()

    def run(self) -> None:
        import ray

        while not self._halt.is_set():
            try:
                self._deliver(ray.get(self.pool.landed.remote(self.trial, self.closed, 2.0)))
            except ray.exceptions.RayError as exc:
                # The pool or the session's queue is unreachable for now (a restarting actor, a
                # busy head): nothing is lost, the ledger keeps the rows; poll again from the
                # last closed step.
                log.warning("courier: cannot deliver validated metrics (%s); retrying", exc)
                self._halt.wait(5.0)

    def _deliver(self, answer: dict) -> None:
        for row in answer["rows"]:
            if row["status"] == "done" and row["step"] > self.delivered:
                step = self.final_step if self.final_step is not None else answer["step"]
                step = max(step, row["step"])  # before rank 0's first heartbeat lands
                report = {**report_metrics(row, self.metrics, step), "step": step}
                self.channel.put(report)  # blocks until Tune's session has taken it
                self.delivered = row["step"]
            self.closed = max(self.closed, row["step"])

    def drain(self, final_step: int, owed, poll_s: float = 1.0) -> None:
        """Training is over at ``final_step``: deliver until ``owed()`` (checkpoints not yet
        closed) is 0 and every closed row has been seen, then stop."""
        self.final_step = final_step
        while self.is_alive() and (owed() or self.closed < self._newest_closed()):
            time.sleep(poll_s)
        self.stop()

    def _newest_closed(self) -> int:
        import ray

        answer = ray.get(self.pool.landed.remote(self.trial, self.closed, timeout_s=0.0))
        return max([self.closed, *(r["step"] for r in answer["rows"])])

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10.0)


def start(pool, trial: str, metrics: list[str]) -> Courier:
    """A running courier for ``trial``."""
    courier = Courier(pool, trial, metrics, tune_channel())
    courier.start()
    return courier
