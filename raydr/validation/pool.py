"""The validation pool: one async Ray actor that owns the ledger and N warm validator actors.

Trainers *push* (trial, step, checkpoint path) with ``submit`` and never wait. The pool owns the
work from then on, so a checkpoint submitted just before its trial is stopped is still
validated. With dynamic negatives (``training.mining.source: dynamic``) the same job also
rebuilds the trial's mining index from the checkpoint (one encode serves both) and publishes
it; workers fetch the newest with ``published`` without waiting. Each checkpoint gets exactly
one closing ledger row: a validator that dies mid-way is restarted by Ray and the checkpoint
re-done; a checkpoint that cannot be loaded is recorded as failed with its reason while the pool
keeps serving.

The pool is also where a search's trials meet the scheduler: rank 0 beats its step here
(``heartbeat``), a trial's courier long-polls for rows as they close (``landed``) to hand them to
Tune at once, and a trial paused at a scheduler rung waits here (``wait_released``) until the
driver's scheduler has decided on that rung's metric (``release``). When the scheduler stops a
trial and the search says ``tune.stopped_checkpoints=cancel``, the driver has the pool drop that
trial's queued work (``cancel``): no decision will read those metrics.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import ray

from raydr import capacity
from raydr.capacity import Demand
from raydr.config import RaydrConfig
from raydr.errors import RaydrError
from raydr.validation import ledger as rows
from raydr.validation.ledger import Ledger

log = logging.getLogger(__name__)

NAMESPACE = "raydr"


def pool_name(run_name: str) -> str:
    return f"raydr-validation-pool-{run_name}"


@dataclass
class _Job:
    """One unit of pool work: validate a checkpoint, rebuild a trial's mining index, or both."""

    trial: str
    step: int
    path: str
    validate: bool = True
    mine: str | None = None  # "refresh" | "nystrom" | None
    rung: bool = False  # a scheduler decides on this checkpoint's metric
    seq: int = 0  # arrival order, set when queued


def pick(waiting: list[_Job], served: dict[str, int], order: str) -> _Job:
    """The job a free validator takes. ``rungs_first``: checkpoints a scheduler is waiting on
    first (a decision there stops or keeps a whole trial); then the trial served longest ago, so
    one trial's burst of checkpoints cannot starve the others; within a trial, the oldest (its
    metrics reach the scheduler in step order). ``served``: trial → when it was last served."""
    if order == "fifo":
        return min(waiting, key=lambda j: j.seq)
    return min(waiting, key=lambda j: (not j.rung, served.get(j.trial, -1), j.seq))


@dataclass
class _Mining:
    """One trial's dynamic-negatives state. Publishing replaces a (step, ObjectRef) pair in one
    assignment: an object in Ray's store is immutable, so a reader holds the old index or the
    new one, never a mix."""

    settings: dict[str, Any]  # the trial's training.mining
    planned: int = 0  # step of the newest refresh queued (0: the initial model's)
    base: tuple[int, Any] | None = None  # the newest full refresh: what Nyström corrects
    published: tuple[int, Any] | None = None  # the newest index, refreshed or corrected

    def plan(self, step: int) -> str | None:
        """What a checkpoint at ``step`` does for mining: a full refresh once ``refresh_every``
        steps have passed since the last one, else a Nyström correction (if landmarks)."""
        if step - self.planned >= self.settings["refresh_every"]:
            self.planned = step
            return "refresh"
        return "nystrom" if self.settings.get("landmarks") else None

    def publish(self, step: int, ref, kind: str) -> None:
        # Out-of-order finishes (two validators) never replace a newer index with an older one.
        if kind == "refresh" and (self.base is None or step > self.base[0]):
            self.base = (step, ref)
        if self.published is None or step > self.published[0]:
            self.published = (step, ref)


@ray.remote(num_cpus=0)
class ValidationPool:
    def __init__(self, config: dict[str, Any], subset: list[str] | None, ledger_path: str) -> None:
        from raydr.validation.validator import Validator

        self.cfg = RaydrConfig.model_validate(config)
        vcfg = self.cfg.validation
        self.ledger = Ledger(ledger_path)
        options = {
            "num_cpus": vcfg.num_cpus,
            "num_gpus": vcfg.num_gpus,
            "resources": dict(vcfg.resources) or None,
            "max_restarts": -1,  # a dead validator comes back (warm state rebuilt in __init__)
            "max_task_retries": 0,  # the pool re-does the work itself, so it is recorded once
        }
        threads = max(1, int(vcfg.num_cpus))
        self.actors = [
            ray.remote(Validator).options(**options).remote(config, subset, threads)
            for _ in range(vcfg.num_actors)
        ]
        self._started = False
        self._inflight: set[tuple[str, int]] = set()
        self._attempts: dict[tuple[str, int], int] = {}
        self._mining: dict[str, _Mining] = {}
        self._progress: dict[str, int] = {}  # trial → the newest step rank 0 finished
        self._released: dict[str, int] = {}  # trial → newest validated step the scheduler passed
        self._stopped: dict[str, str] = {}  # trial → why its queued checkpoints are cancelled

    async def _start(self) -> None:
        if self._started:
            return
        self._started = True
        self._changed = asyncio.Event()  # set (and replaced) when a row closes or a rung opens
        self._waiting: list[_Job] = []
        self._arrived = asyncio.Event()
        self._seq = 0
        self._served: dict[str, int] = {}  # trial → dispatch number when last served
        self._dispatched = 0
        self._free: asyncio.Queue = asyncio.Queue()
        for actor in self.actors:
            self._free.put_nowait(actor)
        # Work owed from before a restart: intake rows with no outcome yet.
        for row in self.ledger.pending():
            self._queue(_Job(row["trial"], int(row["step"]), row["checkpoint"]))
        self._dispatcher = asyncio.get_running_loop().create_task(self._dispatch())

    def _queue(self, job: _Job) -> None:
        self._seq += 1
        job.seq = self._seq
        self._waiting.append(job)
        self._arrived.set()

    async def submit(self, trial: str, step: int, path: str, rung: bool = False) -> bool:
        """Queue a checkpoint once; → False when it is already queued, running or recorded.
        ``rung``: a scheduler decides on its metric (validated first, see ``pick``)."""
        await self._start()
        key = (trial, int(step))
        if key in self.ledger.state() or key in self._inflight:
            return False
        self.ledger.append(rows.pending(trial, step, path))
        if trial in self._stopped:  # a checkpoint that raced its trial's stop
            self.ledger.append(rows.cancelled(trial, step, path, self._stopped[trial]))
            self._signal()
            return False
        mining = self._mining.get(trial)
        plan = mining and mining.plan(int(step))
        self._queue(_Job(trial, int(step), path, mine=plan, rung=rung))
        return True

    async def cancel(self, trial: str, reason: str = "its trial was stopped") -> int:
        """``trial`` was stopped: close each of its queued checkpoints with a cancelled row and
        drop its queued mining work. A checkpoint already being validated finishes (its row
        comes as usual), and one submitted from now on is closed at intake, so each checkpoint
        still gets exactly one closing row. → checkpoints cancelled."""
        await self._start()
        self._stopped[trial] = reason
        theirs = [job for job in self._waiting if job.trial == trial]
        self._waiting = [job for job in self._waiting if job.trial != trial]
        dropped = [job for job in theirs if job.validate]
        for job in dropped:
            self.ledger.append(rows.cancelled(trial, job.step, job.path, reason))
        if dropped:
            self._signal()
        return len(dropped)

    async def published(
        self, trial: str, have_step: int, settings: dict[str, Any], model: str
    ) -> list | None:
        """The trial's newest mining index as ``[step, ObjectRef]`` if newer than ``have_step``,
        else None. The first call registers the trial and queues its initial index (from
        ``model``, the model training starts from). Answers at once: never waits for work."""
        await self._start()
        state = self._mining.get(trial)
        if state is None:
            state = self._mining[trial] = _Mining(settings)
            self._queue(_Job(trial, 0, model, validate=False, mine="refresh"))
        if state.published is None or state.published[0] <= have_step:
            return None
        return [state.published[0], state.published[1]]

    async def _dispatch(self) -> None:
        while True:
            # A free validator first, then the best job at that moment: a rung checkpoint that
            # arrives while every validator is busy still goes ahead of older work.
            actor = await self._free.get()
            while not self._waiting:
                self._arrived.clear()
                await self._arrived.wait()
            job = pick(self._waiting, self._served, self.cfg.validation.order)
            self._waiting.remove(job)
            self._dispatched += 1
            self._served[job.trial] = self._dispatched
            self._inflight.add((job.trial, job.step))
            asyncio.get_running_loop().create_task(self._run(actor, job))

    async def _run(self, actor, job: _Job) -> None:
        trial, step, path = job.trial, job.step, job.path
        key = (trial, step)
        t0 = time.time()
        mine = job.mine
        mining = self._mining.get(trial) if mine else None
        if mine == "nystrom" and (mining is None or mining.base is None):
            # The first refresh is still running: nothing to correct yet, and a second full
            # refresh here would double the start's cost (seen: 455 s on one CPU thread).
            mine, mining = None, None
        written = False  # the checkpoint's closing row is in the ledger
        try:
            base = mining.base[1] if mine == "nystrom" else None
            # Streamed: validation's metrics come first, so the row (and the metric Tune reads)
            # never waits for the corpus encode; the new index follows.
            stream = actor.stream.options(num_returns="streaming").remote(
                path, step, mine, base, mining and mining.settings, job.validate
            )
            result = await (await stream.__anext__())
            if job.validate:
                self.ledger.append(
                    rows.done(
                        trial,
                        step,
                        path,
                        result,
                        queued_to_done_s=time.time() - t0,
                        attempts=self._attempts.get(key, 0) + 1,
                    )
                )
                written = True
                self._signal()
            if mining is not None:
                index_ref = await stream.__anext__()
                index = await index_ref  # zero-copy; surfaces a failure of the mining part
                mining.publish(step, index_ref, index.kind)
        except ray.exceptions.RayActorError as exc:
            attempts = self._attempts[key] = self._attempts.get(key, 0) + 1
            if written:  # validated already: only the index is owed
                job = _Job(trial, step, path, validate=False, mine=job.mine)
            if attempts <= self.cfg.validation.max_retries:
                log.warning(
                    "validator died on %s step %d; re-doing (attempt %d)", trial, step, attempts
                )
                self._queue(job)  # training keeps the previous index meanwhile
            elif job.validate:
                self._record_failure(trial, step, path, f"validator died {attempts} times: {exc}")
            else:
                log.error(
                    "mining index of %s step %d lost: validator died %d times", *key, attempts
                )
            await self._revive(actor)
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause if isinstance(exc.cause, Exception) else exc
            reason = (
                str(cause) if isinstance(cause, RaydrError) else f"{type(cause).__name__}: {cause}"
            )
            if job.validate and not written:
                self._record_failure(trial, step, path, reason)
            else:
                log.error("mining index of %s step %d failed: %s", trial, step, reason)
        except Exception as exc:  # e.g. an OSError appending the done row: never stay pending
            log.exception("validation of %s step %d failed outside the validator", trial, step)
            try:
                if job.validate and not written:
                    self._record_failure(trial, step, path, f"{type(exc).__name__}: {exc}")
            except Exception:  # the ledger itself is unwritable: a restarted pool redoes it
                log.exception("cannot record the failure of %s step %d", trial, step)
        finally:
            self._inflight.discard(key)
            self._free.put_nowait(actor)

    async def _revive(self, actor, timeout_s: float = 300.0) -> None:
        # Ray restarts a dead validator (max_restarts=-1), but calls made while it restarts fail
        # at once; wait until it answers so the re-do is not burnt on a restarting actor.
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            try:
                await actor.ping.remote()
                return
            except ray.exceptions.RayActorError:
                await asyncio.sleep(0.5)

    def _record_failure(self, trial: str, step: int, path: str, reason: str) -> None:
        self.ledger.append(rows.failed(trial, step, path, reason))
        self._signal()

    def _signal(self) -> None:
        # Wake every long-poll at once; each re-checks its own condition.
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait_change(self, deadline: float) -> bool:
        """Sleep until something closes or opens, or ``deadline``; → False on the deadline."""
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        try:
            await asyncio.wait_for(self._changed.wait(), left)
        except TimeoutError:
            return False
        return True

    async def heartbeat(self, trial: str, step: int) -> None:
        """Rank 0 of ``trial`` finished ``step`` (fire and forget: training never waits)."""
        self._progress[trial] = max(int(step), self._progress.get(trial, -1))

    async def progress(self) -> dict[str, int]:
        """The newest step each trial's rank 0 reported finishing: where a stopped trial was."""
        return dict(self._progress)

    async def landed(self, trial: str, after: int, timeout_s: float = 5.0) -> dict[str, Any]:
        """Closing rows of ``trial`` above step ``after``, by step, as soon as there is one (a
        long poll: waits up to ``timeout_s`` for the next). → {"rows": [...], "step": the
        trial's newest finished step, -1 before its first}."""
        await self._start()
        deadline = time.monotonic() + timeout_s
        while True:
            closed = sorted(
                (
                    r
                    for (t, s), r in self.ledger.state().items()
                    if t == trial and s > after and r["status"] in rows.CLOSED
                ),
                key=lambda r: r["step"],
            )
            if closed or not await self._wait_change(deadline):
                return {"rows": closed, "step": self._progress.get(trial, -1)}

    async def release(self, trial: str, step: int) -> None:
        """The scheduler let ``trial`` go on after seeing its metric of checkpoint ``step``."""
        await self._start()
        self._released[trial] = max(int(step), self._released.get(trial, -1))
        self._signal()

    async def wait_released(self, trial: str, step: int, timeout_s: float = 5.0) -> bool:
        """True once the scheduler has passed ``trial`` on a metric of ``step`` or later, or the
        checkpoint failed validation (no metric will come to decide on); False after
        ``timeout_s`` (a long poll: the caller asks again)."""
        await self._start()
        deadline = time.monotonic() + timeout_s
        while True:
            if self._released.get(trial, -1) >= step:
                return True
            if self.ledger.state().get((trial, int(step)), {}).get("status") == "failed":
                return True
            if not await self._wait_change(deadline):
                return False

    async def latest(self, trial: str) -> dict[str, Any] | None:
        """The newest validated checkpoint of ``trial`` (highest step), or None."""
        return self.ledger.latest(trial)

    async def results(self, trial: str | None = None) -> list[dict[str, Any]]:
        return self.ledger.results(trial)

    async def close(self) -> None:
        """Stop dispatching (call before killing the pool, so it exits without noise)."""
        if self._started:
            self._dispatcher.cancel()

    async def owed(self, trial: str) -> int:
        """Checkpoints of ``trial`` taken in but not yet done or failed."""
        await self._start()
        return sum(1 for r in self.ledger.pending() if r["trial"] == trial)

    async def owed_checkpoints(self) -> list[tuple[str, int]]:
        """(trial, step) of every checkpoint taken in and not yet closed."""
        await self._start()
        return [(r["trial"], int(r["step"])) for r in self.ledger.pending()]

    async def inflight(self) -> list[tuple[str, int]]:
        return sorted(self._inflight)

    async def idle(self) -> bool:
        await self._start()
        return not self._waiting and not self._inflight

    async def actor_handles(self) -> list:
        return list(self.actors)


def demand(cfg: RaydrConfig) -> Demand:
    """One validator's reservation: what must fit before the pool can validate anything."""
    v = cfg.validation
    return Demand(
        field="validation",
        bundle={"CPU": v.num_cpus, "GPU": v.num_gpus, **v.resources},
        count=1,
        hint="set validation.num_gpus=0 on CPU clusters"
        if v.num_gpus > 0 and not v.resources
        else "check validation.num_cpus, num_gpus and resources against the cluster's node types",
    )


def check_resources(cfg: RaydrConfig) -> None:
    """Refuse validator reservations the cluster cannot meet, instead of hanging (on an
    autoscaling cluster: once its autoscaler has had its say)."""
    capacity.ensure(
        [demand(cfg)],
        autoscaler=cfg.ray.autoscaler,
        timeout_s=cfg.ray.scale_up_timeout_s,
        settle_s=cfg.ray.infeasible_after_s,
    )


def start_pool(cfg: RaydrConfig):
    """Create (or reattach to) the run's named pool. → actor handle."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from raydr.validation.sampling import prepare_subset

    check_resources(cfg)
    ledger = Ledger.for_run(cfg)
    ledger.rows()  # a damaged ledger fails here, in one line, not later inside the actor
    subset = prepare_subset(cfg)

    # The pool writes the ledger to the driver's disk, so it must live on the driver's node.
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return ValidationPool.options(
        name=pool_name(cfg.name),
        namespace=NAMESPACE,
        get_if_exists=True,
        lifetime=None,
        scheduling_strategy=here,
    ).remote(cfg.model_dump(mode="json"), subset, str(ledger.path))


def wait_idle(pool, timeout_s: float = 3600.0, poll_s: float = 1.0) -> bool:
    """Block the *driver* (never a trainer) until the pool has nothing queued or running.

    Raises RaydrError naming the checkpoints still owed when ``timeout_s`` runs out; the
    ledger keeps them pending, so a rerun validates them."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if ray.get(pool.idle.remote()):
            return True
        time.sleep(poll_s)
    owed = ray.get(pool.owed_checkpoints.remote())
    shown = ", ".join(f"{trial} step {step}" for trial, step in owed[:5])
    raise RaydrError(
        f"validation did not finish within {timeout_s:g} s; still owed: {shown}"
        f"{' …' if len(owed) > 5 else ''} ({len(owed)} in all; they stay pending in the ledger "
        f"and are validated when the run is resumed)"
    )
