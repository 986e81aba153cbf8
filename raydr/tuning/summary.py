"""A search's results: a table of trials, the best checkpoint exported, the curves plotted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from raydr.config import RaydrConfig


def summarize(cfg: RaydrConfig, grid, metric: str, total_steps: int) -> dict[str, Any]:
    from raydr import atomic
    from raydr.validation.ledger import Ledger
    from raydr.validation.report import best_row, export, plot_curves

    ledger = Ledger.for_run(cfg)
    run_dir = cfg.paths.run_dir
    trials, stopped = [], set()
    for result in grid:
        trial = Path(result.path).name if result.path else "?"
        trial_id = (result.metrics or {}).get("trial_id", trial)
        rows = ledger.results(trial_id)
        best = best_row(rows, metric)
        # Stopped early = its training did not reach the last step (the scheduler cut it).
        last_step = (result.metrics or {}).get("step") or 0
        complete = last_step >= total_steps
        if not complete:
            stopped.add(trial_id)
        trials.append(
            {
                "trial": trial_id,
                "config": {k: v for k, v in (result.config or {}).items()},
                "best_metric": best["metrics"][metric] if best else None,
                "best_step": best["step"] if best else None,
                "validated_checkpoints": len(rows),
                "last_training_step": (result.metrics or {}).get("step"),
                "stopped_early": not complete,
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
    trial_steps = sum((t["last_training_step"] or 0) for t in trials)
    summary = {
        "metric": metric,
        "trials": trials,
        "best_trial": best_trial,
        "best_model": exported,
        "plot": str(png),
        "trial_steps_run": trial_steps,
        "trial_steps_without_scheduler": total_steps * len(trials),
    }
    atomic.write_json(run_dir / "summary.json", summary)
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    metric = summary["metric"]
    lines = [f"{'trial':<14} {metric:>9} {'at step':>8} {'stopped':>8}  config"]
    for t in sorted(summary["trials"], key=lambda t: -(t["best_metric"] or -1)):
        value = f"{t['best_metric']:.4f}" if t["best_metric"] is not None else "-"
        lines.append(
            f"{t['trial']:<14} {value:>9} {t['best_step'] or '-':>8} "
            f"{'yes' if t['stopped_early'] else 'no':>8}  {t['config']}"
        )
    saved = 1 - summary["trial_steps_run"] / max(1, summary["trial_steps_without_scheduler"])
    lines.append(
        f"trial-steps run: {summary['trial_steps_run']} of "
        f"{summary['trial_steps_without_scheduler']} without a scheduler ({saved:.0%} saved)"
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
