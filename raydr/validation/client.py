"""The training side of validation: the checkpoint hooks the loop calls.

``PoolHook`` pushes each committed checkpoint to the run's ``ValidationPool`` and never waits;
``InlineHook`` validates right there on rank 0 (``validation.mode: inline``: no pool, training
waits). Neither carries metrics back into training reports: a validated metric reaches Tune by
one path, the trial's courier (``raydr.tuning.courier``). ``PoolNegatives`` gives every worker
the pool's newest mining index (dynamic negatives).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from raydr.config import MiningConfig, RaydrConfig
from raydr.validation.ledger import Ledger, done_row

log = logging.getLogger(__name__)


@dataclass
class PoolHook:
    """Rank 0's handle on a named, running ValidationPool (looked up lazily in the worker)."""

    pool: str  # the pool actor's name
    trial: str  # the ledger's trial key
    rungs: tuple[int, ...] = ()  # checkpoint steps a scheduler decides on: validated first
    wait_at_rungs: bool = False  # pause at those steps until the scheduler has decided
    _pool: Any = field(default=None, init=False, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_pool": None}  # an actor handle is looked up where it is used

    def _handle(self, fresh: bool = False):
        import ray

        from raydr.validation.pool import NAMESPACE

        # Cached for the per-step heartbeat; a checkpoint looks the pool up afresh, so a pool
        # restarted under the same name still gets it.
        if fresh or self._pool is None:
            self._pool = ray.get_actor(self.pool, namespace=NAMESPACE)
        return self._pool

    def on_checkpoint(self, step: int, uri: str) -> None:
        # Fire and forget: the pool owns the work from here, even if this trial is stopped.
        self._handle(fresh=True).submit.remote(self.trial, step, uri, step in self.rungs)

    def progress(self, step: int) -> None:
        # Fire and forget: where a stopped trial really was, for honest trial-step counts.
        self._handle().heartbeat.remote(self.trial, step)

    def hold(self, step: int) -> None:
        """At a scheduler rung (with ``wait_at_rungs``), wait until the scheduler has decided on
        this checkpoint's metric: a trial it stops never trains past the rung. Every rank waits
        here (not in a collective, whose timeout a long validation queue could exceed)."""
        if not self.wait_at_rungs or step not in self.rungs:
            return
        import time

        import ray

        t0 = time.monotonic()
        log.info("step %d is a scheduler rung: paused until its metric is decided", step)
        try:
            while not ray.get(self._handle().wait_released.remote(self.trial, step)):
                pass
        except ray.exceptions.RayError as exc:
            # Without the pool no decision can come; pausing for ever would waste the resources.
            log.warning("rung wait at step %d: the pool is unreachable (%s); going on", step, exc)
            return
        log.info("rung at step %d passed after %.1f s paused", step, time.monotonic() - t0)


@dataclass
class PoolNegatives:
    """A training worker's view of its trial's mining index in the pool (a ``NegativeSource``).

    ``poll`` never waits: it sends one small request at most every ``poll_s``, and picks up the
    answer, then the index itself, on later calls once Ray has them ready. Until the first
    index lands, ``draw`` returns None and the loop falls back to static or random negatives."""

    pool: str  # the pool actor's name
    trial: str  # the ledger's trial key
    mining: MiningConfig  # this trial's training.mining
    model: str  # what training starts from: the pool's initial index encodes with it
    _index: Any = field(default=None, init=False, repr=False)  # NegativeIndex
    _request: Any = field(default=None, init=False, repr=False)  # ObjectRef of the answer
    _fetch: Any = field(default=None, init=False, repr=False)  # ObjectRef of the index
    _asked_at: float = field(default=-1e18, init=False, repr=False)
    # Draws served from the index, by the sampler that made them: the report says which ran.
    _drawn: dict[str, int] = field(
        default_factory=lambda: {"softmax": 0, "topk": 0}, init=False, repr=False
    )

    @classmethod
    def for_run(cls, cfg: RaydrConfig, pool: str, trial: str) -> PoolNegatives | None:
        """The run's source of dynamic negatives, or None for static ones."""
        if cfg.training.mining.source != "dynamic":
            return None
        return cls(pool, trial, cfg.training.mining, cfg.model.name)

    def poll(self) -> None:
        import ray

        try:
            self._poll()
        except (ray.exceptions.RayError, ValueError) as exc:
            # The pool died or restarted (its objects die with it): keep training on the index
            # held, or the fallback, and ask again later. Losing the pool must not stop training.
            log.warning(
                "dynamic negatives: cannot reach the pool's index (%s); keeping %s",
                exc,
                "the index held" if self._index is not None else "the fallback",
            )
            self._request = self._fetch = None

    def _poll(self) -> None:
        import time

        import ray

        from raydr.mining.dynamic import NegativeIndex
        from raydr.validation.pool import NAMESPACE

        if self._fetch is not None:  # the index is on its way to this node
            ready, _ = ray.wait([self._fetch], timeout=0, fetch_local=True)
            if ready:
                snapshot = ray.get(self._fetch)
                self._index, self._fetch = NegativeIndex(snapshot, self._nprobe(snapshot)), None
            return
        if self._request is not None:
            ready, _ = ray.wait([self._request], timeout=0)
            if ready:
                answer, self._request = ray.get(self._request), None
                if answer is not None:
                    self._fetch = answer[1]
            return
        now = time.monotonic()
        if now - self._asked_at >= self.mining.poll_s:
            self._asked_at = now
            have = -1 if self._index is None else self._index.snapshot.step
            handle = ray.get_actor(self.pool, namespace=NAMESPACE)
            self._request = handle.published.remote(self.trial, have, self.mining, self.model)

    def _nprobe(self, snapshot) -> int | None:
        from raydr.mining.dynamic import default_nprobe

        setting = self.mining.nprobe
        if setting == "auto":
            return default_nprobe(snapshot.n_docs, len(snapshot.clusters.sizes))
        return None if setting == "exact" else int(setting)

    def draw(self, query_id, exclude, n, rng) -> list[int] | None:
        index = self._index
        if index is None or not index.knows(query_id):
            return None
        if self.mining.sampling == "softmax":
            self._drawn["softmax"] += 1
            return index.sample(query_id, n, self.mining.temperature, rng, exclude)
        self._drawn["topk"] += 1
        top = index.top(query_id, self.mining.depth, exclude)
        return [top[i] for i in rng.choice(len(top), size=n, replace=False)]

    def describe(self, step: int) -> dict[str, Any]:
        drawn = {f"dynamic_draws_{kind}": n for kind, n in self._drawn.items()}
        if self._index is None:
            return {
                "negatives_source": "fallback",
                "index_step": -1,
                "staleness_steps": -1,
                **drawn,
            }
        snap = self._index.snapshot
        return {
            "negatives_source": "dynamic",
            **drawn,
            **snap.describe(),
            "staleness_steps": step - snap.step,  # steps since the index's encoder
            "docs_staleness_steps": step - snap.base_step,  # since its last full re-encode
            "index_nprobe": self._index.nprobe or 0,  # 0: exact over the whole index
            # An approximate softmax draw's distance from the exact one is at most this.
            "softmax_tv_bound": self._index.last_tv_bound,
        }


@dataclass
class InlineHook:
    """Validate on rank 0 while every worker waits (``validation.mode: inline``): no pool
    actors, the simplest setup; ``raydr bench async`` measures what the pool saves over it."""

    cfg: RaydrConfig  # resolved at the driver (absolute paths)
    subset: list[str] | None
    trial: str
    _validator: Any = field(default=None, init=False, repr=False)
    _ledger: Ledger | None = field(default=None, init=False, repr=False)

    def on_checkpoint(self, step: int, uri: str) -> None:
        import torch

        from raydr.validation.validator import Validator

        if self._validator is None:  # built on first use, in the worker, then kept warm
            self._validator = Validator(self.cfg, self.subset, threads=torch.get_num_threads())
            self._ledger = Ledger.for_run(self.cfg)  # read once: this hook writes its trial's rows
        metrics = self._validator.validate(uri, step)
        ledger = self._ledger
        ledger.append(done_row(self.trial, step, uri, metrics))
        # training.keep, as the pool applies it: the ledger decides what stays.
        from raydr.validation import retention

        rows = [r for (t, _), r in ledger.state().items() if t == self.trial]
        metric, mode = retention.ranking(self.cfg)
        todo = retention.plan(rows, self.cfg.training.keep, metric, mode)
        freed = retention.Freed.load(self.cfg)
        freed.add(retention.apply(todo, self.cfg.paths.train_storage))
        freed.save(self.cfg)

    def progress(self, step: int) -> None:
        pass  # training and validation are one process here: nothing runs ahead

    def hold(self, step: int) -> None:
        pass  # every checkpoint is validated before training goes on
