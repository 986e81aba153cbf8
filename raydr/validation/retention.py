"""Which checkpoints a trial keeps on disk, decided from its ledger rows (``training.keep``).

Ray's own ``CheckpointConfig(num_to_keep, checkpoint_score_attribute)`` scores a checkpoint on
the metrics of its report, and raydr's metric lands later, from the pool. So the ledger decides
here, each time a trial's checkpoint is taken in or closed, and ``training.checkpoint`` deletes:

- kept: the ``best`` done checkpoints by the primary metric (``validation.report.best_row``'s
  order, so ``raydr best`` and a search's summary find theirs), the ``newest`` (the resume
  point), and every checkpoint still owed a validation or still in the pool's queue;
- only the newest keep optimizer state; other kept ones keep the model (and stay loadable);
- a trial the scheduler stopped never resumes: once nothing is owed it keeps its best alone;
  a search's trial that finished never resumes either (Tune skips it): it keeps its ``best``,
  without optimizer state;
- everything else is deleted.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from raydr import atomic
from raydr.config import KeepConfig, RaydrConfig
from raydr.validation.ledger import Row, validation_dir

_FIGURES = "retention.json"  # beside the ledger: what retention has freed so far


@dataclass(frozen=True)
class Plan:
    """What to do to one trial's checkpoints (paths as the ledger holds them)."""

    delete: list[str] = field(default_factory=list)  # whole checkpoints
    strip: list[str] = field(default_factory=list)  # kept, but without optimizer state


def ranking(cfg: RaydrConfig) -> tuple[str, str]:
    """(metric, mode) that retention ranks by: the search's, else the declared primary metric."""
    if cfg.tune.metric:
        return cfg.tune.metric, cfg.tune.mode
    return cfg.eval.primary_metric, "max"


def plan(
    rows: Iterable[Row],
    keep: KeepConfig,
    metric: str,
    mode: str = "max",
    *,
    stopped: bool = False,
    finished: bool = False,
    busy: Iterable[int] = (),
) -> Plan:
    """``rows``: one trial's latest row per checkpoint (``Ledger.state``); ``busy``: its steps
    still in the pool's queue, running or waiting (a mining job reads a checkpoint after its
    row has closed). ``stopped``: the scheduler stopped the trial; ``finished``: a search's
    trial trained to its end (neither resumes)."""
    if keep.best is None:
        return Plan()  # keep every checkpoint, whole
    by_step = {int(r["step"]): r for r in rows}
    owed = {s for s, r in by_step.items() if r["status"] == "pending"} | set(busy)
    sign = 1 if mode == "max" else -1
    done = [
        (s, r)
        for s, r in by_step.items()
        if r["status"] == "done" and metric in r.get("metrics", {})
    ]
    # Best first; ties go to the earlier step, as best_row breaks them.
    done.sort(key=lambda sr: (-sign * sr[1]["metrics"][metric], sr[0]))
    if (stopped or finished) and not owed:
        best, newest = {s for s, _ in done[: 1 if stopped else keep.best]}, set()
    else:
        best = {s for s, _ in done[: keep.best]}
        newest = set(sorted(by_step, reverse=True)[: keep.newest])
    kept = owed | best | newest
    return Plan(
        delete=[by_step[s]["checkpoint"] for s in sorted(by_step) if s not in kept],
        # An owed checkpoint is left whole until it closes: a validator may be reading it.
        strip=[by_step[s]["checkpoint"] for s in sorted(kept - newest - owed)],
    )


@dataclass
class Freed:
    """What retention has done in a run or search: the figures its summary gives."""

    deleted: int = 0  # whole checkpoints
    stripped: int = 0  # checkpoints whose optimizer state went
    bytes_freed: int = 0

    def add(self, other: Freed) -> None:
        self.deleted += other.deleted
        self.stripped += other.stripped
        self.bytes_freed += other.bytes_freed

    @classmethod
    def load(cls, cfg: RaydrConfig) -> Freed:
        """The run's (or search's) figures so far; zeros when retention never ran."""
        try:
            return cls(**json.loads((validation_dir(cfg) / _FIGURES).read_text()))
        except (OSError, ValueError, TypeError):
            return cls()

    def save(self, cfg: RaydrConfig) -> None:
        atomic.write_json(validation_dir(cfg) / _FIGURES, asdict(self))


def disk(cfg: RaydrConfig, trials: Iterable[str] | None = None) -> dict[str, Any]:
    """Checkpoints and bytes on disk now for the run (a search's ``trials``: for each,
    ``<storage>/<name>-<trial>``), beside what retention freed: the summaries' figure."""
    from raydr.training import checkpoint

    storage = cfg.paths.train_storage
    kept: dict[str, Any] = {"checkpoints_kept": None, "bytes_kept": None}
    if "://" not in storage:
        root = Path(storage)
        # Named trial by trial, not globbed: a search "s-x" would match "s-*" of search "s".
        names = [cfg.name] if trials is None else [f"{cfg.name}-{t}" for t in trials]
        runs = [root / n for n in names]
        folders = [c for run in runs for c in checkpoint.listed(run)]
        kept = {
            "checkpoints_kept": len(folders),
            "bytes_kept": sum(checkpoint.size_bytes(f) for f in folders),
        }
    freed = Freed.load(cfg)
    return {
        **kept,
        "checkpoints_deleted": freed.deleted,
        "checkpoints_stripped": freed.stripped,
        "bytes_freed": freed.bytes_freed,
    }


def describe(figures: dict[str, Any]) -> str:
    """One line: ``disk: 2 checkpoints, 360 MB kept; retention freed 2.1 GB (8 deleted, ...)``."""
    kept = figures["bytes_kept"]
    head = (
        "disk: kept on cloud storage (not measured)"
        if kept is None
        else f"disk: {figures['checkpoints_kept']} checkpoints, {_size(kept)} kept"
    )
    return (
        f"{head}; retention freed {_size(figures['bytes_freed'])} "
        f"({figures['checkpoints_deleted']} deleted, {figures['checkpoints_stripped']} without "
        f"optimizer state)"
    )


def _size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


def strays(cfg: RaydrConfig, trial: str, rows: Iterable[Row]) -> list[str]:
    """Checkpoint folders of a search's ``trial`` that its ledger never took in: Ray committed
    them, then the scheduler's stop killed the trial before rank 0 handed them to the pool.
    Only meaningful once the search is over (``ValidationPool.settle``): until then a folder
    without a row may be one whose submission is on its way."""
    from raydr.training import checkpoint

    storage = cfg.paths.train_storage
    if "://" in storage:
        return []
    taken = {int(r["step"]) for r in rows}
    run = Path(storage) / f"{cfg.name}-{trial}"
    return [str(f) for f in checkpoint.listed(run) if checkpoint.step_of(f) not in taken]


def apply(todo: Plan, storage: str) -> Freed:
    """Carry out ``todo`` on the checkpoints inside the run's Ray Train ``storage`` only: a
    folder elsewhere (one that ``raydr validate`` was handed, a test's fixture) is never
    touched, and neither is cloud storage (its bucket's lifecycle rules apply there)."""
    from raydr.training import checkpoint

    def ours(path: str) -> bool:
        return "://" not in path and path.startswith(storage.rstrip("/") + "/")

    freed = Freed()
    for path in filter(ours, todo.delete):
        gone = checkpoint.delete(path)
        freed.deleted += gone > 0
        freed.bytes_freed += gone
    for path in filter(ours, todo.strip):
        gone = checkpoint.strip_training_state(path)
        freed.stripped += gone > 0
        freed.bytes_freed += gone
    return freed
