"""What every tracking backend shares: config params and numbers named alike, and the run a
job's folder records (``tracking.json``), so that a rerun resumes it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

VALIDATION = "validation/"  # prefix of the validated metrics


def metric_name(key: str) -> str:
    """An MLflow metric name for raydr's: ``nDCG@10/debian`` → ``nDCG_at_10/debian``."""
    return key.replace("@", "_at_")


def flat(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"training": {"lr": 1e-4}}`` → ``{"training.lr": "0.0001"}``; MLflow params are text."""
    out: dict[str, str] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out |= flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = str(value)
    return out


def numbers(metrics: dict[str, Any], rename=metric_name) -> dict[str, float]:
    """The numeric entries of a report, ``rename``d (text and flags are left out)."""
    return {
        rename(k): float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


def recorded_run(record: Path, **expected: str) -> str | None:
    """The run id ``record`` holds, if each of its ``expected`` fields matches; else None (a
    first run, or one tracked elsewhere)."""
    try:
        held = json.loads(record.read_text())
    except (OSError, ValueError):
        return None
    if any(held.get(key) != value for key, value in expected.items()):
        return None
    return held.get("run_id")
