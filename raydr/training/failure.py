"""A failed training run in one line: Ray's error (every rank's traceback, dozens of lines) goes
to a file in the run folder, and the user reads the first failing rank's cause and that file."""

from __future__ import annotations

from raydr.config import RaydrConfig
from raydr.errors import RaydrError


def training_failed(cfg: RaydrConfig, exc: Exception) -> RaydrError:
    """Ray's error (every rank's traceback, dozens of lines) → a file in the run folder, and
    one line naming the first failing rank's cause and that file."""
    from raydr import atomic

    failures: dict[int, BaseException] = getattr(exc, "worker_failures", None) or {}
    if failures:
        ranks = sorted(failures)
        who = f"rank{'s' if len(ranks) > 1 else ''} {','.join(map(str, ranks))}"
        cause = f"{who}: {_one_line(failures[ranks[0]])}"
    else:  # the controller failed (e.g. it could not schedule the workers)
        cause = _one_line(getattr(exc, "controller_failure", exc))
    path = cfg.paths.run_dir / "train-failure.log"
    try:
        atomic.write_text(path, f"{type(exc).__name__}: {exc}\n")
    except OSError as err:  # the one line must still come out
        return RaydrError(f"training failed: {cause} (could not write {path}: {err})")
    return RaydrError(f"training failed: {cause}; full log: {path}")


def _one_line(exc: BaseException) -> str:
    """Our own errors already read as one line; others get their type and last line."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    text = lines[-1].strip() if lines else ""
    return text if isinstance(exc, RaydrError) else f"{type(exc).__name__}: {text}".rstrip(": ")
