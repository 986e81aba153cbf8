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
        runs.append(run_row(policy, summary, time.perf_counter() - t0))
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
    publish(payload, args.out, payload["ratios"])


def publish(payload: dict[str, Any], out: Path, figures: dict[str, Any]) -> None:
    """Write the JSON and the steps-per-trial PNG beside it; print the headline figures."""
    from raydr.bench.common import write_json

    write_json(out, payload)
    plot(payload, out.with_suffix(".png"))
    for key, value in figures.items():
        print(f"{key}: {value:.2f}" if isinstance(value, float) else f"{key}: {value}")
    print(f"wrote {out} and {out.with_suffix('.png')}")


def run_row(policy: str, summary: dict[str, Any], wall_s: float) -> dict[str, Any]:
    """One search's figures, as the stopping and search benchmarks record them."""
    run, without = summary["trial_steps_run"], summary["trial_steps_without_scheduler"]
    return {
        "policy": policy,
        "wall_s": wall_s,
        "trial_steps_run": run,
        "trial_steps_without_scheduler": without,
        "saved": 1 - run / max(1, without),
        "rung_checkpoints": summary["rung_checkpoints"],
        "mean_decision_lag_steps": _mean(
            [lag for t in summary["trials"] for lag in t["decision_lag_steps"].values()]
        ),
        "best_trial": (summary["best_trial"] or {}).get("config"),
        "best_metric": (summary["best_trial"] or {}).get("best_metric"),
        "validation": summary.get("validation"),
        "trials": [
            {
                "config": t["config"],
                "stopped_early": t["stopped_early"],
                "steps_run": t["last_training_step"],
                "decided_on_step": t["decided_on_step"],
                "decision_lag_steps": t["decision_lag_steps"],
                "best_metric": t["best_metric"],
                "full_corpus_metric": t.get("full_corpus_metric"),
                "cancelled_checkpoints": t.get("cancelled_checkpoints", 0),
                "error": t.get("error"),
            }
            for t in summary["trials"]
        ],
        # A failed trial is not a stopped one: its figures would flatter the policy.
        "failed_trials": sum(1 for t in summary["trials"] if t.get("error")),
    }


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _line(row: dict[str, Any]) -> str:
    stops = [
        f"{t['config']} at {t['steps_run']} (on step {t['decided_on_step']})"
        for t in row["trials"]
        if t["stopped_early"]
    ]
    lag = row["mean_decision_lag_steps"]
    failed = f"; {row['failed_trials']} trials FAILED" if row.get("failed_trials") else ""
    return (
        f"{row['policy']}{failed}: {row['trial_steps_run']} of {row['trial_steps_without_scheduler']} "
        f"trial-steps ({row['saved']:.0%} saved) in {row['wall_s']:.0f} s; mean decision lag "
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


def plot(payload: dict[str, Any], path: Path) -> None:
    """Steps each trial trained, per policy (hatched: stopped by the scheduler)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from raydr.atomic import save_figure

    runs = payload["runs"]
    labels = sorted({_short(t["config"]) for r in runs for t in r["trials"]})
    width = 0.8 / max(1, len(runs))
    fig, ax = plt.subplots(figsize=(max(8, 1.4 * len(labels)), 4.5))
    for k, run in enumerate(runs):
        by = {_short(t["config"]): t for t in run["trials"]}
        xs = [i + (k - (len(runs) - 1) / 2) * width for i in range(len(labels))]
        heights = [max(0, by[lab]["steps_run"]) if lab in by else 0 for lab in labels]
        bars = ax.bar(
            xs, heights, width, label=f"{run['policy']} ({run['saved']:.0%} of trial-steps saved)"
        )
        for bar, lab in zip(bars, labels, strict=True):
            if lab in by and by[lab]["stopped_early"]:
                bar.set_hatch("//")
    for rung in runs[0]["rung_checkpoints"] if runs else []:
        ax.axhline(rung, color="grey", lw=0.8, ls=":")
    ax.set_xticks(range(len(labels)), labels, fontsize=7)
    ax.set_ylabel("training steps run (hatched: stopped)")
    cpu = payload["machine"].get("cpu")
    what = payload.get("title", "Steps trained per trial under each decision policy")
    ax.set_title(f"{what} ({cpu})", fontsize=9)
    ax.legend(fontsize=8)
    save_figure(fig, path)
    plt.close(fig)


def _short(config: dict[str, Any]) -> str:
    """{'training.lr': 3e-05, 'training.temperature': 0.05} → 'lr=3e-05\ntemperature=0.05'."""
    return "\n".join(
        f"{k.rsplit('.', 1)[-1]}={v:g}" if isinstance(v, float) else f"{k.rsplit('.', 1)[-1]}={v}"
        for k, v in config.items()
    )
