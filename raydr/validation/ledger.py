"""The validation ledger: append-only JSON lines, one per event, the single source of truth.

Rows: ``{"trial", "step", "checkpoint", "status": "pending"|"done"|"failed", ...}``. A checkpoint
is *pending* from intake until a *done* or *failed* row closes it, so a restarted pool knows what
is still owed. Each append is one ``write`` of one line followed by fsync; a crash can only leave
a torn last line, which readers skip and the next writer cuts off.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

Key = tuple[str, int]  # (trial, step)


class Ledger:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._repair()

    def _repair(self) -> None:
        # Cut a torn final line left by a crash mid-append, so new rows start on a fresh line.
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            with open(self.path, "r+b") as fh:
                fh.truncate(keep)
                os.fsync(fh.fileno())

    def append(self, row: dict[str, Any]) -> dict[str, Any]:
        row = {"time": time.time(), **row}
        line = (json.dumps(row, sort_keys=True, default=str) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        return row

    def rows(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a torn line from a crash; the event it described did not complete
        return out

    def state(self) -> dict[Key, dict[str, Any]]:
        """The latest row per (trial, step): what is pending, done or failed now."""
        latest: dict[Key, dict[str, Any]] = {}
        for row in self.rows():
            key = (row["trial"], int(row["step"]))
            if latest.get(key, {}).get("status") in {"done", "failed"}:
                continue  # closed rows are final: exactly one outcome per checkpoint
            latest[key] = row
        return latest

    def results(self, trial: str | None = None) -> list[dict[str, Any]]:
        """Done rows (with metrics), by trial then step."""
        rows = [
            r
            for r in self.state().values()
            if r["status"] == "done" and (trial is None or r["trial"] == trial)
        ]
        return sorted(rows, key=lambda r: (r["trial"], r["step"]))

    def pending(self) -> list[dict[str, Any]]:
        return sorted(
            (r for r in self.state().values() if r["status"] == "pending"),
            key=lambda r: (r["trial"], r["step"]),
        )
