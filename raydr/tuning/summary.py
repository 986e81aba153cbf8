"""A search's results: a table of trials, the best checkpoint exported, the curves plotted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from raydr.config import RaydrConfig


def summarize(
    cfg: RaydrConfig,
    grid,
    metric: str,
    total_steps: int,
    progress: dict[str, int] | None = None,
    rungs: tuple[int, ...] = (),
) -> dict[str, Any]:
    """``progress``: each trial's newest finished training step (the pool's heartbeats; a
    stopped trial ran past its last report); ``rungs``: ASHA's rung checkpoints, whose decision
    lags the summary gives."""
    from raydr import atomic
    from raydr.validation.ledger import VALIDATED_STEP, Ledger
    from raydr.validation.report import best_row, export, plot_curves

    ledger = Ledger.for_run(cfg)
    run_dir = cfg.paths.run_dir
    trials, stopped = [], set()
    for result in grid:
        trial = Path(result.path).name if result.path else "?"
        metrics = result.metrics or {}
        trial_id = metrics.get("trial_id", trial)
        rows = ledger.results(trial_id)
        best = best_row(rows, metric)
        # Stopped early = its training did not reach the last step (the scheduler cut it).
        reported = metrics.get("step") or 0
        reached = max(reported, (progress or {}).get(trial_id, -1))
        complete = reached >= total_steps
        if not complete:
            stopped.add(trial_id)
        received = _received(result, VALIDATED_STEP)
        lags = decision_lags(received, rungs, None if complete else reached)
        trials.append(
            {
                "trial": trial_id,
                "config": {k: v for k, v in (result.config or {}).items()},
                "best_metric": best["metrics"][metric] if best else None,
                "best_step": best["step"] if best else None,
                "validated_checkpoints": len(rows),
                "last_training_step": reached,
                "stopped_early": not complete,
                # The validated step whose metric stopped it: its last report's.
                "decided_on_step": None if complete else metrics.get(VALIDATED_STEP),
                "decision_lag_steps": lags,
                "error": str(result.error) if result.error else None,
            }
        )
    scored = [t for t in trials if t["best_metric"] is not None]
    best_trial = (
        max(scored, key=lambda t: t["best_metric"] * (1 if cfg.tune.mode == "max" else -1))
        if scored
        else None
    )
    exported = None
    if best_trial is not None:
        row = best_row(ledger.results(best_trial["trial"]), metric)
        exported = str(export(row, run_dir / "best_model"))
    png = plot_curves(
        ledger,
        metric,
        run_dir / "tune_curves.png",
        stopped=stopped,
        labels={t["trial"]: _short_config(t["config"]) for t in trials},
    )
    trial_steps = sum(max(0, t["last_training_step"] or 0) for t in trials)
    summary = {
        "metric": metric,
        "trials": trials,
        "best_trial": best_trial,
        "best_model": exported,
        "plot": str(png),
        "trial_steps_run": trial_steps,
        "trial_steps_without_scheduler": total_steps * len(trials),
        "rung_checkpoints": list(rungs),
        "metric_delivery": cfg.tune.metric_delivery,
        "rung_wait": cfg.tune.rung_wait,
    }
    atomic.write_json(run_dir / "summary.json", summary)
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    metric = summary["metric"]
    lines = [f"{'trial':<14} {metric:>9} {'at step':>8} {'stopped':>10}  config"]
    for t in sorted(summary["trials"], key=lambda t: -(t["best_metric"] or -1)):
        value = f"{t['best_metric']:.4f}" if t["best_metric"] is not None else "-"
        stop = f"at {t['last_training_step']}" if t["stopped_early"] else "no"
        lines.append(
            f"{t['trial']:<14} {value:>9} {t['best_step'] or '-':>8} {stop:>10}  {t['config']}"
        )
    saved = 1 - summary["trial_steps_run"] / max(1, summary["trial_steps_without_scheduler"])
    lines.append(
        f"trial-steps run: {summary['trial_steps_run']} of "
        f"{summary['trial_steps_without_scheduler']} without a scheduler ({saved:.0%} saved)"
    )
    lags = [
        f"{t['trial']} {', '.join(f'{lag} past {rung}' for rung, lag in t['decision_lag_steps'].items())}"
        for t in summary["trials"]
        if t.get("decision_lag_steps")
    ]
    if lags:
        lines.append(
            "decision lag, steps trained past each rung before its decision: " + "; ".join(lags)
        )
    if summary["best_model"]:
        lines.append(f"best model: {summary['best_model']}")
    lines.append(f"curves: {summary['plot']}")
    return "\n".join(lines)


def _short_config(config: dict[str, Any]) -> str:
    """{'training.lr': 5e-05} → 'lr=5e-05', for legends."""
    return ", ".join(
        f"{key.rsplit('.', 1)[-1]}={value:g}"
        if isinstance(value, float)
        else f"{key.rsplit('.', 1)[-1]}={value}"
        for key, value in config.items()
    )


def _received(result, key: str) -> list[tuple[int, int]]:
    """(training step, validated step) of every report that carried a validated metric."""
    frame = getattr(result, "metrics_dataframe", None)
    if frame is None or key not in frame or "step" not in frame:
        return []
    pairs = frame[["step", key]].dropna()
    return [(int(step), int(validated)) for step, validated in pairs.itertuples(index=False)]


def decision_lags(
    received: list[tuple[int, int]], rungs: tuple[int, ...], stopped_at: int | None
) -> dict[int, int]:
    """Steps a trial trained past each rung checkpoint before the scheduler could decide on it:
    the training step of the first report whose validated step reached the rung, minus the rung.
    For a stopped trial's deciding rung (its last), the steps past it when the stop landed."""
    lags: dict[int, int] = {}
    for rung in rungs:
        first = [step for step, validated in received if validated >= rung]
        if first:
            lags[rung] = max(0, first[0] - rung)
    if stopped_at is not None and lags:
        last = max(lags)
        lags[last] = max(lags[last], stopped_at - last)
    return lags
