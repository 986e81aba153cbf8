"""The validation pool: one async Ray actor that owns the ledger and N warm validator actors.

Trainers *push* (trial, step, checkpoint path) with ``submit`` and never wait. The pool owns the
work from then on, so a checkpoint submitted just before its trial is stopped is still
validated. Each checkpoint gets exactly one closing ledger row: a validator that dies mid-way is
restarted by Ray and the checkpoint re-done; a checkpoint that cannot be loaded is recorded as
failed with its reason while the pool keeps serving.

The actor composes three parts and keeps only what ties them together (``_run``: one job on
one validator, and what its outcome writes):
- ``queue.WorkQueue``: what waits, which validator is free, dispatch order and retries;
- ``scatter.Gathering``: with ``validation.shards`` above 1, a checkpoint is one job per shard
  on as many validators, merged and scored once when the last shard is in (``_run_shard``);
- ``mining.publisher.Publication``: with dynamic negatives (``training.mining.source:
  dynamic``) the same job rebuilds the trial's mining index from the checkpoint (one encode
  serves both), and workers fetch the newest with ``published`` without waiting;
- ``rendezvous.Rendezvous``: where a search's trials meet the scheduler (heartbeats, the
  couriers' long polls, the rung-release barrier).
When the scheduler stops a trial and the search says ``tune.stopped_checkpoints=cancel``, the
driver has the pool drop that trial's queued work (``cancel``): no decision will read it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from typing import Any

import ray

from raydr import capacity
from raydr.capacity import Demand
from raydr.config import MiningConfig, RaydrConfig
from raydr.errors import RaydrError
from raydr.mining.publisher import Publication
from raydr.tracking import TrackingRun
from raydr.validation.ledger import Ledger, cancelled_row, done_row, failed_row, pending_row
from raydr.validation.queue import Job, Key, WorkQueue
from raydr.validation.rendezvous import Rendezvous
from raydr.validation.retention import Freed
from raydr.validation.scatter import Gathering

log = logging.getLogger(__name__)

NAMESPACE = "raydr"


def pool_name(run_name: str) -> str:
    return f"raydr-validation-pool-{run_name}"


@ray.remote(num_cpus=0)
class ValidationPool:
    def __init__(
        self,
        cfg: RaydrConfig,
        subset: list[str] | None,
        ledger_path: str,
        retain: bool = True,
        shards: tuple[str, list] | None = None,
        tracking: TrackingRun | None = None,
    ) -> None:
        from raydr.validation.validator import Validator

        self.cfg = cfg
        self.tracking = tracking  # each closed row is also logged there, at its step
        self.retain = retain  # prune by training.keep (not when validating a user's folders)
        vcfg = cfg.validation
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
            ray.remote(Validator).options(**options).remote(cfg, subset, threads)
            for _ in range(vcfg.num_actors)
        ]
        self._started = False
        self._mining: dict[str, Publication] = {}
        self._stopped: dict[str, str] = {}  # trial → why its queued checkpoints are cancelled
        self._halted: set[str] = set()  # trials the scheduler stopped: they never resume
        self._finished: set[str] = set()  # a search's trials that trained to their end
        self.freed = Freed.load(cfg)  # a resumed run goes on counting
        # Scatter (``scatter.pool_shards``): the store the shards read, and each one's positions.
        self.passages, self.parts = shards if shards else (None, [])
        self.whole = subset is None  # the shards cover every passage: a refresh can use them
        self._gathering: dict[Key, Gathering] = {}
        self._queries: dict[str, Any] | None = None  # the validation queries, for scoring

    async def _start(self) -> None:
        # asyncio state must be made inside the actor's running loop, not in __init__.
        if self._started:
            return
        self._started = True
        vcfg = self.cfg.validation
        self.queue = WorkQueue(self.actors, vcfg.order, vcfg.max_retries)
        self.meet = Rendezvous(self.ledger.state)
        self._pruning = asyncio.Lock()
        self._retaining = 0
        # Work owed from before a restart: intake rows with no outcome yet.
        for row in self.ledger.pending():
            self._enqueue(Job(row["trial"], int(row["step"]), row["checkpoint"]))
        self._dispatcher = asyncio.get_running_loop().create_task(self._dispatch())

    # ---------------------------------------------------------------- intake and cancelling

    async def submit(self, trial: str, step: int, path: str, rung: bool = False) -> bool:
        """Queue a checkpoint once; → False when it is already queued, running or recorded.
        ``rung``: a scheduler decides on its metric (validated first, see ``queue.pick``)."""
        await self._start()
        key = (trial, int(step))
        if key in self.ledger.state() or key in self.queue.running:
            return False
        self.ledger.append(pending_row(trial, step, path))
        if trial in self._stopped:  # a checkpoint that raced its trial's stop
            self.ledger.append(cancelled_row(trial, step, path, self._stopped[trial]))
            self.meet.signal()
            return False
        mining = self._mining.get(trial)
        plan = mining.plan(int(step)) if mining else None
        self._enqueue(Job(trial, int(step), path, mine=plan, rung=rung))
        await self._retain(trial)  # the previous newest no longer needs its optimizer state
        return True

    def _enqueue(self, job: Job) -> None:
        """Queue ``job``: as one job per shard when the pool scatters and the checkpoint needs
        validating, or a full refresh whose shards cover the whole corpus (then they also keep
        their embeddings, and one more job assembles the index from them). A Nyström
        correction, or a refresh beside a subset's shards, runs whole in one validator."""
        refresh = job.mine == "refresh" and self.whole and job.parts is None
        if self.parts and job.part is None and ((job.validate and job.mine is None) or refresh):
            self._gathering[job.key] = Gathering(
                len(self.parts), validate=job.validate, refresh=refresh
            )
            for part in range(len(self.parts)):
                self.queue.put(replace(job, part=part))
        else:
            self.queue.put(job)

    async def cancel(self, trial: str, reason: str = "its trial was stopped") -> int:
        """``trial`` was stopped: close each of its queued checkpoints with a cancelled row and
        drop its queued mining work. A checkpoint already being validated finishes (its row
        comes as usual; a scattered one keeps its remaining shards), and one submitted from now
        on is closed at intake, so each checkpoint still gets exactly one closing row.
        → checkpoints cancelled."""
        await self._start()
        self._stopped[trial] = reason
        dropped: dict[Key, Job] = {}
        for job in self.queue.drop(trial):
            gathering = self._gathering.get(job.key)
            if gathering is not None and gathering.runs and job.validate:  # under way: finishes
                self.queue.put(job)
                continue
            if job.part is not None:
                self._gathering.pop(job.key, None)
            if job.validate:
                dropped[job.key] = job
        for job in dropped.values():
            self.ledger.append(cancelled_row(trial, job.step, job.path, reason))
        if dropped:
            self.meet.signal()
        self._halted.add(trial)
        await self._retain(trial)
        return len(dropped)

    async def stopped(self, trial: str) -> None:
        """The scheduler stopped ``trial`` (whether or not its queued work is cancelled): it
        will never resume, so once its rows are closed it keeps only its best checkpoint."""
        await self._start()
        self._halted.add(trial)
        await self._retain(trial)

    async def finished(self, trial: str) -> None:
        """A search's ``trial`` trained to its end and its validations are in: Tune never runs
        it again, so it keeps its best checkpoints only, without optimizer state."""
        await self._start()
        self._finished.add(trial)
        await self._retain(trial)

    async def settle(self) -> None:
        """The search is over (the driver calls this after ``fit``, once the pool is idle): no
        trial submits any more. A trial that the scheduler stopped, or that finished, loses
        the checkpoint folders its ledger never took in (see ``retention.strays``)."""
        await self._start()
        for trial in sorted(self._halted | self._finished):
            await self._retain(trial, strays=True)

    async def published(
        self, trial: str, have_step: int, settings: MiningConfig, model: str
    ) -> list | None:
        """The trial's newest mining index as ``[step, ObjectRef]`` if newer than ``have_step``,
        else None. The first call registers the trial and queues its initial index (from
        ``model``, the model training starts from). Answers at once: never waits for work."""
        await self._start()
        state = self._mining.get(trial)
        if state is None:
            state = self._mining[trial] = Publication(settings)
            self._enqueue(Job(trial, 0, model, validate=False, mine="refresh"))
        newer = state.newer_than(have_step)
        return None if newer is None else list(newer)

    # ---------------------------------------------------------------- running the work

    async def _dispatch(self) -> None:
        while True:
            actor, job = await self.queue.take()
            asyncio.get_running_loop().create_task(self._run(actor, job))

    async def _run(self, actor, job: Job) -> None:
        if job.part is not None:
            return await self._run_shard(actor, job)
        trial, step, path = job.trial, job.step, job.path
        t0 = time.time()
        mine = job.mine
        mining = self._mining.get(trial) if mine else None
        if mine == "nystrom" and (mining is None or mining.base is None):
            # The first refresh is still running: nothing to correct yet, and a second full
            # refresh here would double the start's cost (seen: 455 s on one CPU thread).
            mine, mining = None, None
        written = False  # the checkpoint's closing row is in the ledger
        try:
            if job.parts is not None:  # a scattered refresh: its shards' embeddings, joined
                index_ref = actor.assemble.remote(path, step, job.parts, mining.settings)
                index = await index_ref
                mining.publish(step, index_ref, index.kind)
                return
            base = mining.base[1] if mine == "nystrom" else None
            # Streamed: validation's metrics come first, so the row (and the metric Tune reads)
            # never waits for the corpus encode; the new index follows.
            stream = actor.stream.options(num_returns="streaming").remote(
                path, step, mine, base, mining and mining.settings, job.validate
            )
            result = await (await stream.__anext__())
            if job.validate:
                self.ledger.append(
                    done_row(
                        trial,
                        step,
                        path,
                        result,
                        queued_to_done_s=time.time() - t0,
                        attempts=self.queue.attempts(job.slot) + 1,
                    )
                )
                written = True
                self.meet.signal()
                if self.tracking is not None:  # off the event loop: a database write
                    await asyncio.to_thread(self.tracking.log_validation, step, result)
            if mining is not None:
                index_ref = await stream.__anext__()
                index = await index_ref  # zero-copy; surfaces a failure of the mining part
                mining.publish(step, index_ref, index.kind)
        except ray.exceptions.RayActorError as exc:
            # Validated already: only the index is owed.
            redo = Job(trial, step, path, validate=False, mine=job.mine) if written else job
            gave_up = self.queue.retry(redo)
            if gave_up is None:
                log.warning(
                    "validator died on %s step %d; re-doing (attempt %d)",
                    trial,
                    step,
                    self.queue.attempts(job.slot),
                )  # training keeps the previous index meanwhile
            elif redo.validate:
                self._record_failure(job, f"validator died {gave_up} times: {exc}")
            else:
                log.error(
                    "mining index of %s step %d lost: validator died %d times", *job.key, gave_up
                )
            await self._revive(actor)
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause if isinstance(exc.cause, Exception) else exc
            reason = (
                str(cause) if isinstance(cause, RaydrError) else f"{type(cause).__name__}: {cause}"
            )
            if job.validate and not written:
                self._record_failure(job, reason)
            else:
                log.error("mining index of %s step %d failed: %s", trial, step, reason)
        except Exception as exc:  # e.g. an OSError appending the done row: never stay pending
            log.exception("validation of %s step %d failed outside the validator", trial, step)
            try:
                if job.validate and not written:
                    self._record_failure(job, f"{type(exc).__name__}: {exc}")
            except Exception:  # the ledger itself is unwritable: a restarted pool redoes it
                log.exception("cannot record the failure of %s step %d", trial, step)
        finally:
            self._retaining += 1  # idle() waits for retention too: the driver kills the pool then
            self.queue.finished(actor, job)
            try:
                await self._retain(trial)
            finally:
                self._retaining -= 1

    async def _run_shard(self, actor, job: Job) -> None:
        """One shard of a scattered checkpoint; the last one in scores the merged run and
        writes the checkpoint's one closing row (and, for a refresh, queues the assembly of
        the index from the shards' embeddings). A validator that dies mid-shard costs that
        shard alone (queued again); a checkpoint that cannot be loaded fails once."""
        gathering = self._gathering.get(job.key)
        try:
            if gathering is None or gathering.closed:  # another shard already failed it
                return
            gathering.started(job.part)
            args = (job.path, job.step, self.passages, self.parts[job.part])
            if gathering.refresh:  # the embeddings stay in the object store, for assemble
                keep = self._mining[job.trial].settings.index_dtype
                out_ref, emb_ref = actor.shard.options(num_returns=2).remote(*args, keep)
                out = await out_ref
                gathering.embeddings[job.part] = emb_ref
            else:
                out = await actor.shard.remote(*args)
            if gathering.closed or not gathering.add(job.part, out):
                return
            if gathering.refresh:  # queued first: the index never waits for the scoring
                parts = [gathering.embeddings[i] for i in range(gathering.shards)]
                self.queue.put(Job(job.trial, job.step, job.path, False, "refresh", parts=parts))
            if not gathering.validate:
                self._close(job, gathering, None)
                return
            if self._queries is None:
                from raydr.validation.scatter import queries_of

                self._queries = await asyncio.to_thread(
                    queries_of, self.cfg, self.cfg.validation.split
                )
            metrics = await asyncio.to_thread(gathering.metrics, self.cfg, self._queries, job.step)
            if gathering.refresh:
                settings = self._mining[job.trial].settings
                metrics.update(
                    mining_kind="refresh",
                    index_step=job.step,
                    index_base_step=job.step,
                    refresh_every=settings.refresh_every,
                )
            row = done_row(
                job.trial,
                job.step,
                job.path,
                metrics,
                queued_to_done_s=time.time() - gathering.queued_at,
                attempts=max(metrics["shard_runs"]),
            )
            if self._close(job, gathering, row) and self.tracking is not None:
                await asyncio.to_thread(self.tracking.log_validation, job.step, metrics)
        except ray.exceptions.RayActorError as exc:
            gave_up = self.queue.retry(job)
            if gave_up is None:
                log.warning(
                    "validator died on %s step %d shard %d; re-doing that shard", *job.key, job.part
                )
            else:
                reason = f"validator died {gave_up} times on shard {job.part}: {exc}"
                self._fail(job, gathering, reason)
            await self._revive(actor)
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause if isinstance(exc.cause, Exception) else exc
            reason = (
                str(cause) if isinstance(cause, RaydrError) else f"{type(cause).__name__}: {cause}"
            )
            self._fail(job, gathering, reason)
        except Exception as exc:
            log.exception("validation of %s step %d failed outside the validator", *job.key)
            try:
                self._fail(job, gathering, f"{type(exc).__name__}: {exc}")
            except Exception:  # the ledger itself is unwritable: a restarted pool redoes it
                log.exception("cannot record the failure of %s step %d", *job.key)
        finally:
            self._retaining += 1
            self.queue.finished(actor, job)
            try:
                await self._retain(job.trial)
            finally:
                self._retaining -= 1

    def _fail(self, job: Job, gathering: Gathering, reason: str) -> None:
        """A scattered checkpoint cannot be finished: its failed row, if it owes one."""
        if not gathering.validate:
            log.error("mining index of %s step %d lost: %s", *job.key, reason)
            self._close(job, gathering, None)
            return
        self._close(job, gathering, failed_row(job.trial, job.step, job.path, reason))

    def _close(self, job: Job, gathering: Gathering, row) -> bool:
        """Close a scattered checkpoint once, whichever shard gets here: write its row (None:
        a mining-only refresh owes none) and forget it, so its remaining shards are skipped.
        → whether this call closed it."""
        if gathering.closed:
            return False
        gathering.closed = True  # before the write: a failing write must not be retried twice
        if self._gathering.get(job.key) is gathering:
            del self._gathering[job.key]
        if row is not None:
            self.ledger.append(row)
            self.meet.signal()
        return True

    async def _retain(self, trial: str, strays: bool = False) -> None:
        """Apply ``training.keep`` to ``trial`` now that its rows changed (see ``retention``);
        ``strays``: also delete its folders that have no row (only once the search is over)."""
        if not self.retain:
            return
        from raydr.validation import retention

        async with self._pruning:  # one plan at a time: each sees the last one's outcome
            rows = [r for (t, _), r in self.ledger.state().items() if t == trial]
            busy = self.queue.steps(trial)
            metric, mode = retention.ranking(self.cfg)
            todo = retention.plan(
                rows,
                self.cfg.training.keep,
                metric,
                mode,
                stopped=trial in self._halted,
                finished=trial in self._finished,
                busy=busy,
            )
            if strays and self.cfg.training.keep.best is not None:
                todo.delete.extend(retention.strays(self.cfg, trial, rows))
            if todo.delete or todo.strip:
                storage = self.cfg.paths.train_storage
                try:  # deleting takes a while: keep answering long polls meanwhile
                    self.freed.add(await asyncio.to_thread(retention.apply, todo, storage))
                    self.freed.save(self.cfg)
                except OSError as exc:  # a full or read-only disk must not stop validation
                    log.warning("retention for %s failed: %s", trial, exc)

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

    def _record_failure(self, job: Job, reason: str) -> None:
        self.ledger.append(failed_row(job.trial, job.step, job.path, reason))
        self.meet.signal()

    # ---------------------------------------------------------------- the Tune rendezvous

    async def heartbeat(self, trial: str, step: int) -> None:
        """Rank 0 of ``trial`` finished ``step`` (fire and forget: training never waits)."""
        await self._start()
        self.meet.heartbeat(trial, step)

    async def progress(self) -> dict[str, int]:
        """The newest step each trial's rank 0 reported finishing: where a stopped trial was."""
        await self._start()
        return self.meet.progress()

    async def landed(self, trial: str, after: int, timeout_s: float = 5.0) -> dict[str, Any]:
        """Closing rows of ``trial`` above step ``after`` as soon as there is one (a long poll;
        see ``Rendezvous.landed``)."""
        await self._start()
        return await self.meet.landed(trial, after, timeout_s)

    async def release(self, trial: str, step: int) -> None:
        """The scheduler let ``trial`` go on after seeing its metric of checkpoint ``step``."""
        await self._start()
        self.meet.release(trial, step)

    async def wait_released(self, trial: str, step: int, timeout_s: float = 5.0) -> bool:
        """True once the scheduler has decided on ``trial``'s rung ``step`` (a long poll; see
        ``Rendezvous.wait_released``)."""
        await self._start()
        return await self.meet.wait_released(trial, step, timeout_s)

    # ---------------------------------------------------------------- what the driver reads

    async def results(self, trial: str | None = None) -> list[dict[str, Any]]:
        return self.ledger.results(trial)

    async def dispatched(self) -> int:
        """Jobs handed to validators so far: a scattered checkpoint counts one per shard, and
        each re-do one more (what a validator's death cost)."""
        await self._start()
        return self.queue.dispatched

    async def ledger_reads(self) -> int:
        """Times the pool read its ledger file: once at start, whatever the run's length."""
        await self._start()
        return self.ledger.reads

    async def close(self) -> None:
        """Stop dispatching (call before killing the pool, so it exits without noise)."""
        if self._started:
            self._dispatcher.cancel()
        if self.tracking is not None:  # W&B's run in this process is flushed and closed
            await asyncio.to_thread(self.tracking.close_here)

    async def owed(self, trial: str) -> int:
        """Checkpoints of ``trial`` taken in but not yet closed."""
        await self._start()
        return sum(1 for r in self.ledger.pending() if r["trial"] == trial)

    async def owed_checkpoints(self) -> list[tuple[str, int]]:
        """(trial, step) of every checkpoint taken in and not yet closed."""
        await self._start()
        return [(r["trial"], int(r["step"])) for r in self.ledger.pending()]

    async def inflight(self) -> list[tuple[str, int]]:
        await self._start()
        return sorted(self.queue.running)

    async def idle(self) -> bool:
        await self._start()
        return self.queue.idle() and not self._retaining

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


def start_pool(cfg: RaydrConfig, retain: bool = True, tracking: TrackingRun | None = None):
    """Create (or reattach to) the run's named pool. → actor handle. ``retain``: delete
    checkpoints as ``training.keep`` says (off when validating folders a user handed over);
    ``tracking``: the run (MLflow, W&B) each validated checkpoint is logged to."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from raydr.validation.sampling import prepare_subset
    from raydr.validation.scatter import pool_shards

    check_resources(cfg)
    ledger = Ledger.for_run(cfg)
    ledger.rows()  # a damaged ledger fails here, in one line, not later inside the actor
    subset = prepare_subset(cfg)
    shards = pool_shards(cfg, subset)  # None: each checkpoint validated whole

    # The pool writes the ledger to the driver's disk, so it must live on the driver's node.
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return ValidationPool.options(
        name=pool_name(cfg.name),
        namespace=NAMESPACE,
        get_if_exists=True,
        lifetime=None,
        scheduling_strategy=here,
    ).remote(cfg, subset, str(ledger.path), retain, shards, tracking)


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
