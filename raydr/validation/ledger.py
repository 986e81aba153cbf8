"""The validation ledger: append-only JSON lines, one per event, the single source of truth.

This module owns the ledger's location (``Ledger.for_run``), the shape of its rows
(``pending_row``, ``done_row``, ``failed_row``, ``cancelled_row``) and the one projection of a
row into what Ray Tune receives (``report_metrics``). Every reader goes through it.

A checkpoint is *pending* from intake until a *done*, *failed* or *cancelled* row closes it
(cancelled: its trial was stopped by the scheduler before a validator took it, under
``tune.stopped_checkpoints=cancel``), so a restarted pool knows what is still owed; the first
closing row is final (exactly one outcome per checkpoint). Each append is one ``write`` of one
line followed by fsync; a crash can only leave a torn last line, which readers skip and the next
writer cuts off.

A ``Ledger`` keeps the rows and the state in memory. It reads the file once, when first asked,
and after that only the bytes that other processes appended since (a size check says whether
there are any); its own appends join memory without a read. The pool, a run's one writer,
answers every ``submit``, long poll and release from memory: a call costs the same at the
thousandth checkpoint as at the first.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal, TypedDict

from raydr.config import RaydrConfig
from raydr.errors import RaydrError

Key = tuple[str, int]  # (trial, step)
Status = Literal["pending", "done", "failed", "cancelled"]
CLOSED: frozenset[str] = frozenset({"done", "failed", "cancelled"})
_FILE = "ledger.jsonl"
# The report key that carries the step a validated metric was measured on: Tune's time attribute.
VALIDATED_STEP = "validated_step"


_REQUIRED = {"trial", "step", "status", "checkpoint"}


class Row(TypedDict, total=False):
    """One ledger line. ``trial``, ``step``, ``checkpoint``, ``status`` and ``time`` are always
    there; ``metrics`` (a flat dict from the validator) on done rows, ``error`` on failed ones and
    the reason on cancelled ones."""

    time: float
    trial: str
    step: int
    checkpoint: str
    status: Status
    metrics: dict[str, Any]
    error: str
    queued_to_done_s: float
    attempts: int


def pending_row(trial: str, step: int, checkpoint: str) -> Row:
    """Intake: the checkpoint is owed a validation."""
    return Row(trial=trial, step=int(step), checkpoint=checkpoint, status="pending")


def done_row(trial: str, step: int, checkpoint: str, metrics: dict[str, Any], **extra: Any) -> Row:
    """Closing row with the validator's flat metrics dict (``extra``: timings, attempts)."""
    return Row(
        trial=trial, step=int(step), checkpoint=checkpoint, status="done", metrics=metrics, **extra
    )


def failed_row(trial: str, step: int, checkpoint: str, reason: str) -> Row:
    """Closing row for a checkpoint that could not be validated, with the reason."""
    return Row(trial=trial, step=int(step), checkpoint=checkpoint, status="failed", error=reason)


def cancelled_row(trial: str, step: int, checkpoint: str, reason: str) -> Row:
    """Closing row for a queued checkpoint that will not be validated: its trial was stopped."""
    return Row(trial=trial, step=int(step), checkpoint=checkpoint, status="cancelled", error=reason)


def validation_dir(cfg: RaydrConfig) -> Path:
    """The run's validation folder: the ledger, the validation subset, the curve."""
    return cfg.paths.run_dir / "validation"


def report_metrics(row: Row, metrics: Iterable[str], step: int) -> dict[str, Any]:
    """The one projection of a done row into a training report at ``step``: the metric values,
    the step they were measured on (``validated_step``, the scheduler's time attribute) and how
    far training has moved on since (``validation_lag_steps``)."""
    out: dict[str, Any] = {name: row["metrics"][name] for name in metrics}
    out[VALIDATED_STEP] = row["step"]
    out["validation_lag_steps"] = step - row["step"]
    if "queued_to_done_s" in row:  # intake to metric: what a slow-decision warning quotes
        out["validation_wait_s"] = row["queued_to_done_s"]
    return out


class Ledger:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._repair()
        self._rows: list[Row] = []
        self._state: dict[Key, Row] = {}
        self._offset = 0  # bytes of the file taken into memory: whole lines only
        self.reads = 0  # reads of the file's bytes (the pool, its one writer: one, at start)

    @classmethod
    def for_run(cls, cfg: RaydrConfig) -> Ledger:
        """The ledger of ``cfg``'s run (``<output_dir>/<name>/validation/``)."""
        return cls(validation_dir(cfg) / _FILE)

    @classmethod
    def find(cls, run: str | Path) -> Ledger:
        """The ledger a user points at: a run folder, its validation folder, or the file."""
        run = Path(run)
        for candidate in (run, run / _FILE, run / "validation" / _FILE):
            if candidate.is_file():
                return cls(candidate)
        raise RaydrError(f"{run}: no validation ledger (expected {run}/validation/{_FILE})")

    def _repair(self) -> None:
        # Cut a torn final line left by a crash mid-append, so new rows start on a fresh line.
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        with open(self.path, "rb") as fh:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) == b"\n":
                return  # whole: nothing to read
        data = self.path.read_bytes()
        keep = data.rfind(b"\n") + 1
        with open(self.path, "r+b") as fh:
            fh.truncate(keep)
            os.fsync(fh.fileno())

    def append(self, row: Row | dict[str, Any]) -> Row:
        row = Row(time=time.time(), **row)
        line = (json.dumps(row, sort_keys=True, default=str) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
            end = os.lseek(fd, 0, os.SEEK_CUR)  # O_APPEND: where this line ended up
        finally:
            os.close(fd)
        # After the write, memory never runs ahead of the file. When nothing else was written
        # since this ledger last looked, the line joins memory with no read; otherwise the
        # next read takes it in with the others' lines, in file order.
        if end - len(line) == self._offset:
            self._rows.append(row)
            self._take(row)
            self._offset = end
        return row

    def rows(self) -> list[Row]:
        """Every row in order."""
        self._catch_up()
        return list(self._rows)

    def _take(self, row: Row) -> None:
        key = (row["trial"], int(row["step"]))
        if self._state.get(key, {}).get("status") in CLOSED:
            return  # closed rows are final: exactly one outcome per checkpoint
        self._state[key] = row

    def _catch_up(self) -> None:
        """Take in the whole lines written since this ledger last looked (by any process):
        a size check when there are none, a read of the new bytes only when there are. A line
        not yet ended (a crash mid-append; the event it described did not complete) waits; a
        damaged line is an error naming it."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return
        if size <= self._offset:
            return
        self.reads += 1
        with open(self.path, "rb") as fh:
            fh.seek(self._offset)
            data = fh.read(size - self._offset)
        whole = data[: data.rfind(b"\n") + 1]
        number = len(self._rows)
        for raw in whole.splitlines():
            number += 1
            try:
                row = json.loads(raw.decode("utf-8", errors="replace"))
                if not isinstance(row, dict) or not row.keys() >= _REQUIRED:
                    raise ValueError(f"not a ledger row (needs {', '.join(sorted(_REQUIRED))})")
                if row["status"] == "done" and not isinstance(row.get("metrics"), dict):
                    raise ValueError("a done row needs its metrics")
            except ValueError as exc:
                raise RaydrError(
                    f"{self.path}:{number}: corrupt ledger line ({exc}); the ledger is append-only, "
                    f"so this is damage from outside raydr: restore the file, or delete the line "
                    f"to have that checkpoint validated again"
                ) from None
            self._rows.append(row)
            self._take(row)
        self._offset += len(whole)

    def state(self) -> dict[Key, Row]:
        """The latest row per (trial, step): what is pending, done or failed now. A view kept
        up to date in memory: callers must not change it."""
        self._catch_up()
        return self._state

    def results(self, trial: str | None = None) -> list[Row]:
        """Done rows (with metrics), by trial then step."""
        rows = [
            r
            for r in self.state().values()
            if r["status"] == "done" and (trial is None or r["trial"] == trial)
        ]
        return sorted(rows, key=lambda r: (r["trial"], r["step"]))

    def latest(self, trial: str) -> Row | None:
        """The done row of ``trial`` with the highest step, or None."""
        done_rows = self.results(trial)
        return done_rows[-1] if done_rows else None

    def pending(self) -> list[Row]:
        return sorted(
            (r for r in self.state().values() if r["status"] == "pending"),
            key=lambda r: (r["trial"], r["step"]),
        )
