"""The pool's parts on their own, without Ray: the work queue and the Tune rendezvous."""

from __future__ import annotations

import asyncio

from raydr.validation.queue import Job, WorkQueue
from raydr.validation.rendezvous import Rendezvous


def _run(coro):
    return asyncio.run(coro)


def test_the_queue_dispatches_rungs_first_and_frees_its_validator() -> None:
    async def scenario() -> list:
        queue = WorkQueue(["v0"], "rungs_first", max_retries=1)
        queue.put(Job("a", 4, "/a/4"))
        queue.put(Job("a", 8, "/a/8", rung=True))
        actor, first = await queue.take()
        assert (actor, first.key, queue.running) == ("v0", ("a", 8), {("a", 8)})
        assert not queue.idle()
        # The only validator is busy: the next take waits until it is handed back.
        waiting = asyncio.create_task(queue.take())
        await asyncio.sleep(0.01)
        assert not waiting.done()
        queue.finished(actor, first)
        actor, second = await asyncio.wait_for(waiting, 1.0)
        queue.finished(actor, second)
        return [first.step, second.step, queue.idle()]

    assert _run(scenario()) == [8, 4, True]


def test_a_started_checkpoints_other_shards_go_before_other_trials() -> None:
    async def scenario() -> list:
        queue = WorkQueue(["v0", "v1", "v2"], "rungs_first", max_retries=1)
        for part in (0, 1):
            queue.put(Job("a", 4, "/a/4", part=part))
        queue.put(Job("b", 4, "/b/4"))
        order = [(await queue.take())[1] for _ in range(3)]
        # A dead shard is retried alone, counted apart from its sibling.
        queue.retry(order[0])
        return [(j.trial, j.part) for j in order] + [
            queue.attempts(("a", 4, 0)),
            queue.attempts(("a", 4, 1)),
            [(j.key, j.part) for j in queue.waiting],
        ]

    assert _run(scenario()) == [("a", 0), ("a", 1), ("b", None), 1, 0, [(("a", 4), 0)]]


def test_a_job_is_retried_max_retries_times_then_given_up() -> None:
    async def scenario() -> list:
        queue = WorkQueue(["v0"], "fifo", max_retries=2)
        job = Job("a", 4, "/a/4")
        outcomes = [queue.retry(job), queue.retry(job), queue.retry(job)]
        return [outcomes, queue.attempts(job.slot), [j.key for j in queue.waiting]]

    outcomes, attempts, waiting = _run(scenario())
    assert outcomes == [None, None, 3]  # queued twice, given up on the third death
    assert attempts == 3 and waiting == [("a", 4), ("a", 4)]


def test_drop_takes_only_that_trials_waiting_jobs() -> None:
    async def scenario() -> tuple:
        queue = WorkQueue(["v0"], "fifo", max_retries=0)
        for trial, step in [("a", 4), ("b", 4), ("a", 8)]:
            queue.put(Job(trial, step, f"/{trial}/{step}"))
        dropped = queue.drop("a")
        return [j.key for j in dropped], [j.key for j in queue.waiting]

    assert _run(scenario()) == ([("a", 4), ("a", 8)], [("b", 4)])


def test_landed_returns_closed_rows_by_step_and_wakes_on_a_signal() -> None:
    state: dict = {("t", 4): {"trial": "t", "step": 4, "status": "pending"}}

    async def scenario() -> list:
        meet = Rendezvous(lambda: state)
        meet.heartbeat("t", 6)
        meet.heartbeat("t", 5)  # an older beat never moves it back
        empty = await meet.landed("t", -1, timeout_s=0.05)
        poll = asyncio.create_task(meet.landed("t", -1, timeout_s=5.0))
        await asyncio.sleep(0.01)
        state[("t", 8)] = {"trial": "t", "step": 8, "status": "done"}
        state[("t", 4)] = {"trial": "t", "step": 4, "status": "failed"}
        state[("u", 8)] = {"trial": "u", "step": 8, "status": "done"}
        meet.signal()
        woke = await asyncio.wait_for(poll, 1.0)
        above = await meet.landed("t", 4, timeout_s=0.0)
        return [empty, [r["step"] for r in woke["rows"]], woke["step"], above["rows"]]

    empty, steps, at, above = _run(scenario())
    assert empty == {"rows": [], "step": 6}
    assert steps == [4, 8] and at == 6
    assert [r["step"] for r in above] == [8]


def test_a_rung_opens_on_release_or_a_failed_checkpoint_and_not_before() -> None:
    state: dict = {}

    async def scenario() -> list:
        meet = Rendezvous(lambda: state)
        early = await meet.wait_released("t", 8, timeout_s=0.05)
        meet.release("t", 4)  # an older rung's decision does not open this one
        still = await meet.wait_released("t", 8, timeout_s=0.05)
        meet.release("t", 8)  # the decision on this very rung
        opened = await meet.wait_released("t", 8, timeout_s=0.05)
        state[("u", 8)] = {"trial": "u", "step": 8, "status": "failed"}
        failed = await meet.wait_released("u", 8, timeout_s=0.05)
        return [early, still, opened, failed]

    assert _run(scenario()) == [False, False, True, True]
