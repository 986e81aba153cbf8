"""``raydr bench search``: does early stopping pay for itself without losing the winner?

Runs the same search twice in one session on one machine: as configured (ASHA) and unscheduled
(``tune.scheduler.type=none``: every trial trains to its end, the baseline). Each search names
its winner on the full corpus of the validation split (``tune.confirm_top_k``), and each winner
is then evaluated on ``data.split`` (the test split), full corpus, once. Reported: trial-steps
saved, both winners with their full-corpus dev and test metrics and the gap between them, the
subset-vs-full Kendall tau of each search's top trials, and the validator-seconds spent.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from raydr.bench.common import publish
from raydr.bench.measure import plot_trial_steps, search_row, steps_line
from raydr.verb import Verb

RUNS = {  # name → overrides
    "asha": [],  # the search as configured
    "unscheduled": ["tune.scheduler.type=none", "tune.rung_wait=none"],
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", type=Path, help="search job YAML (with a tune section, ASHA)")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--out", type=Path, default=Path("bench-out/search.json"))


def main(args: argparse.Namespace) -> None:
    import ray

    from raydr import config
    from raydr.bench.common import machine
    from raydr.errors import RaydrError
    from raydr.tuning.search import run_search
    from raydr.validation.validator import validate_on_full_corpus

    base = config.load(args.config, list(args.overrides))
    if base.tune.scheduler.type != "asha":
        raise RaydrError(
            f"{args.config}: tune.scheduler.type is {base.tune.scheduler.type!r}; "
            "this benchmark compares an ASHA search against the unscheduled one"
        )
    stamp = int(time.time())
    runs: list[dict[str, Any]] = []
    for name, extra in RUNS.items():
        cfg = config.load(
            args.config, [*args.overrides, f"name={base.name}-bench-{name}-{stamp}", *extra]
        )
        t0 = time.perf_counter()
        summary = run_search(cfg)
        wall = time.perf_counter() - t0
        row = _row(name, summary, wall)
        if summary["best_model"]:
            # The winner on the test split, full corpus: the validators' scoring, so dev and
            # test figures come from one code path.
            t1 = time.perf_counter()
            test = config.load(
                args.config, [*args.overrides, f"validation.split={base.data.split}"]
            )
            metrics = validate_on_full_corpus(
                test.with_absolute_paths(), summary["best_model"], -1, os.cpu_count() or 1
            )
            row["winner_test"] = {
                "split": base.data.split,
                **{k: metrics[k] for k in base.eval.metrics},
            }
            row["winner_test_s"] = time.perf_counter() - t1
        runs.append(row)
        print(_line(row), flush=True)
    ray.shutdown()
    payload = {
        "benchmark": "search",
        "title": "Steps trained per trial: ASHA against the unscheduled search",
        "machine": machine(),
        "config": str(args.config),
        "overrides": list(args.overrides),
        "metric": base.tune.metric or base.eval.primary_metric,
        "runs": runs,
        "comparison": _compare(runs, base.tune.metric or base.eval.primary_metric),
    }
    publish(payload, args.out, payload["comparison"], plot_trial_steps)


def _row(name: str, summary: dict[str, Any], wall_s: float) -> dict[str, Any]:
    best = summary["best_trial"] or {}
    return {
        **search_row(name, summary, wall_s),
        "winner": best.get("config"),
        "winner_subset_metric": best.get("best_metric"),
        "winner_full_metric": best.get("full_corpus_metric"),
        "winner_named_on": summary["winner_named_on"],
        "confirmation": summary["confirmation"],
    }


def _line(row: dict[str, Any]) -> str:
    test = row.get("winner_test") or {}
    full = row["winner_full_metric"]
    return (
        f"{steps_line(row)}; winner "
        f"{row['winner']} (dev full {'-' if full is None else f'{full:.4f}'}, test "
        f"{', '.join(f'{k} {v:.4f}' for k, v in test.items() if isinstance(v, float))})"
    )


def _compare(runs: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    """ASHA against the unscheduled search of the same session."""
    by = {r["policy"]: r for r in runs}
    asha, free = by.get("asha"), by.get("unscheduled")
    if not asha or not free:
        return {}
    out: dict[str, Any] = {
        "trial_steps asha / unscheduled": asha["trial_steps_run"] / free["trial_steps_run"],
        "trial_steps_saved": 1 - asha["trial_steps_run"] / free["trial_steps_run"],
        "wall asha / unscheduled": asha["wall_s"] / free["wall_s"],
        "same_winner": asha["winner"] == free["winner"],
        "failed_trials": asha["failed_trials"] + free["failed_trials"],  # must be 0 to count
    }
    if asha["winner_full_metric"] is not None and free["winner_full_metric"] is not None:
        out[f"winner_gap_full_dev_{metric}"] = (
            free["winner_full_metric"] - asha["winner_full_metric"]
        )
    a, f = (r.get("winner_test", {}).get(metric) for r in (asha, free))
    if a is not None and f is not None:
        out[f"winner_gap_test_{metric}"] = f - a
    out["validator_seconds asha / unscheduled"] = asha["validation"]["validator_seconds"] / max(
        1e-9, free["validation"]["validator_seconds"]
    )
    return out


VERBS = (
    Verb(
        "search",
        "an ASHA search against the same search unscheduled: steps saved, winners",
        add_arguments,
        main,
    ),
)
