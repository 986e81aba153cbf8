"""Atomic writes: readers see the old file or the new one, never half of either.

Everything durable (Parquet tables, metrics, run files, checkpoints, ledgers) goes through
here: write to a temporary sibling, fsync, then ``os.replace`` (atomic on POSIX within one
filesystem, which a sibling guarantees).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _umask_mode(base: int) -> int:
    # mkstemp/mkdtemp create 0600/0700 entries; give the final file the mode a plain open() or
    # mkdir() would, so outputs stay readable by the other users of a shared storage path.
    umask = os.umask(0)
    os.umask(umask)
    return base & ~umask


def _fsync_dir(path: Path) -> None:
    # The rename itself lives in the directory entry; fsync the directory so it survives a crash.
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary file path; on success it is renamed to ``final``, on error removed."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, _umask_mode(0o666))
        os.replace(tmp_path, final)
        _fsync_dir(final.parent)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_text(final: str | os.PathLike[str], text: str) -> None:
    with atomic_path(final) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(final: str | os.PathLike[str], obj: Any) -> None:
    write_text(final, json.dumps(obj, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``final`` as a whole once the block succeeds.

    With ``overwrite=False`` an existing ``final`` is an error raised *before* any work.
    With ``overwrite=True`` the old directory is moved aside and deleted only after the
    new one is in place, so a crash leaves one complete version.
    """
    from raydr.errors import RaydrError

    final = Path(final)
    if final.exists() and not overwrite:
        raise RaydrError(f"{final}: already exists (pass --overwrite to replace it)")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
        os.chmod(tmp, _umask_mode(0o777))
        old = None
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
        os.replace(tmp, final)
        _fsync_dir(final.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


_REMOVED = ".removed-"  # the mark of a directory being deleted (see remove_dir)


def remove_dir(path: str | os.PathLike[str]) -> bool:
    """Delete a directory so that no reader ever sees half of it: one rename takes it out of
    sight (atomic), then it is deleted under its hidden name. A crash in between leaves only a
    hidden ``.<name>.removed-*`` sibling, which ``sweep_removed`` clears. → False if absent."""
    path = Path(path)
    hidden = path.with_name(f".{path.name}{_REMOVED}{os.getpid()}")
    try:
        os.replace(path, hidden)
    except FileNotFoundError:
        return False
    _fsync_dir(path.parent)
    shutil.rmtree(hidden, ignore_errors=True)
    return True


def sweep_removed(parent: str | os.PathLike[str]) -> int:
    """Finish the deletions a crash interrupted under ``parent``. → directories cleared."""
    cleared = 0
    with contextlib.suppress(FileNotFoundError):
        for entry in Path(parent).iterdir():
            if entry.name.startswith(".") and _REMOVED in entry.name and entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
                cleared += 1
    return cleared


def save_figure(fig, final: str | os.PathLike[str]) -> Path:
    """Save a matplotlib figure as PNG, atomically."""
    with atomic_path(final) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    return Path(final)
