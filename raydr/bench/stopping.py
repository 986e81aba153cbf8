"""``raydr bench stopping``: does early stopping still stop trials when validation is slow?

Runs the same search once per decision policy, in one session on one machine, and compares
what each trained: ``on_landing_fifo`` (a validated metric reaches the scheduler as the pool
records it, the pool in arrival order), ``on_landing`` (as the
pool records it, rung checkpoints validated first) and ``rung_wait`` (on landing, and a trial
pauses at each rung until the scheduler decides). For each: trial-steps run against
the unscheduled count, each stopped trial's step at stopping, and the decision lag (steps
trained past each rung before its decision). The baseline is the ``on_landing_fifo`` run of the
same session.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from raydr.bench.common import publish
from raydr.bench.measure import plot_trial_steps, search_row, steps_line
from raydr.verb import Verb

_FINISH = "tune.stopped_checkpoints=finish"
_LANDING = ["tune.rung_wait=none"]  # the courier delivers (the one path; at_checkpoint is gone)
POLICIES = {  # name → overrides
    "on_landing": [*_LANDING, "validation.order=rungs_first", _FINISH],
    "rung_wait": [
        "tune.rung_wait=until_validated",
        "validation.order=rungs_first",
        _FINISH,
    ],
    # The baseline: the pool in arrival order, no pausing at rungs.
    "on_landing_fifo": [*_LANDING, "validation.order=fifo", _FINISH],
    # A stopped trial's queued checkpoints cancelled rather than validated (validator-seconds).
    "on_landing_cancel": [
        *_LANDING,
        "validation.order=rungs_first",
        "tune.stopped_checkpoints=cancel",
    ],
}
BASELINE = "on_landing_fifo"
DEFAULT = ("on_landing_fifo", "on_landing", "rung_wait")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", type=Path, help="search job YAML (with a tune section, ASHA)")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument(
        "--policies",
        default=",".join(DEFAULT),
        help=f"comma-separated, from {', '.join(POLICIES)}",
    )
    p.add_argument("--out", type=Path, default=Path("bench-out/stopping.json"))


def main(args: argparse.Namespace) -> None:
    import ray

    from raydr import config
    from raydr.bench.common import machine
    from raydr.errors import RaydrError
    from raydr.tuning.search import run_search

    chosen = [p.strip() for p in args.policies.split(",") if p.strip()]
    unknown = [p for p in chosen if p not in POLICIES]
    if unknown or not chosen:
        raise RaydrError(f"--policies: unknown {unknown}; expected some of {', '.join(POLICIES)}")
    stamp = int(time.time())
    runs: list[dict[str, Any]] = []
    for policy in chosen:
        base = config.load(args.config, list(args.overrides))
        cfg = config.load(
            args.config,
            [*args.overrides, f"name={base.name}-bench-{policy}-{stamp}", *POLICIES[policy]],
        )
        t0 = time.perf_counter()
        summary = run_search(cfg)
        runs.append(search_row(policy, summary, time.perf_counter() - t0))
        print(_line(runs[-1]), flush=True)
    ray.shutdown()
    payload = {
        "benchmark": "stopping",
        "machine": machine(),
        "config": str(args.config),
        "overrides": list(args.overrides),
        "runs": runs,
        "ratios": _ratios(runs),
    }
    publish(payload, args.out, payload["ratios"], plot_trial_steps)


def _line(row: dict[str, Any]) -> str:
    stops = [
        f"{t['config']} at {t['steps_run']} (on step {t['decided_on_step']})"
        for t in row["trials"]
        if t["stopped_early"]
    ]
    lag = row["mean_decision_lag_steps"]
    return (
        f"{steps_line(row)}; mean decision lag "
        f"{'-' if lag is None else f'{lag:.1f}'} steps; stopped: "
        f"{'; '.join(stops) or 'none'}"
    )


def _ratios(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Each policy's trial-steps and wall time against ``on_landing_fifo`` of the same session, and
    the validator-seconds of cancelling against finishing."""
    by = {r["policy"]: r for r in runs}
    base = by.get(BASELINE)
    out: dict[str, float] = {}
    for name, row in by.items():
        if base is None or name == BASELINE:
            continue
        out[f"trial_steps {name} / {BASELINE}"] = row["trial_steps_run"] / base["trial_steps_run"]
        out[f"wall {name} / {BASELINE}"] = row["wall_s"] / base["wall_s"]
    cancel, finish = by.get("on_landing_cancel"), by.get("on_landing")
    if cancel and finish and cancel.get("validation") and finish.get("validation"):
        out["validator_seconds on_landing_cancel / on_landing"] = cancel["validation"][
            "validator_seconds"
        ] / max(1e-9, finish["validation"]["validator_seconds"])
    return out


VERBS = (
    Verb(
        "stopping",
        "early stopping under slow validation: each decision policy",
        add_arguments,
        main,
    ),
)
