"""Watch mode: find checkpoints in a folder as they become complete, from any trainer.

A raydr checkpoint is complete when every file its record lists is present at its size (it
appears by atomic rename where raydr writes it, but Ray copies it into storage file by file). A
Hugging Face folder from another framework may be written in place, so it counts as complete
only when it has a config and weights and nothing in it changed between two polls at least
``settle_s`` apart. Hidden folders (temporary names) are never picked up.
"""

from __future__ import annotations

import time
from pathlib import Path

from raydr.training import checkpoint


def _signature(folder: Path) -> tuple:
    return tuple(
        sorted(
            (str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*")
            if p.is_file()
        )
    )


class Watcher:
    def __init__(self, root: str | Path, settle_s: float = 2.0) -> None:
        self.root = Path(root)
        self.settle_s = settle_s
        self._seen: dict[Path, tuple[tuple, float]] = {}  # folder → (signature, first seen)
        self._done: set[Path] = set()

    def _candidates(self) -> list[Path]:
        folders = (
            [self.root]
            if checkpoint.looks_loadable(self.root) or (self.root / "config.json").exists()
            else []
        )
        folders += [
            p for p in sorted(self.root.iterdir()) if p.is_dir() and not p.name.startswith(".")
        ]
        return folders

    def poll(self) -> list[Path]:
        """Folders that became complete since the last poll (each returned once)."""
        ready = []
        now = time.monotonic()
        for folder in self._candidates():
            if folder in self._done or not checkpoint.looks_loadable(folder):
                continue
            if checkpoint.is_raydr(folder):
                # Its record lists every file and size: complete exactly when all are there.
                if checkpoint.is_complete(folder):
                    ready.append(folder)
                continue
            sig = _signature(folder)
            prev = self._seen.get(folder)
            if prev is None or prev[0] != sig:
                self._seen[folder] = (sig, now)  # new or still changing: wait for it to settle
            elif now - prev[1] >= self.settle_s:
                ready.append(folder)
        self._done.update(ready)
        return ready
