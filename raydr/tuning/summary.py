"""A search's results: a table of trials, the best checkpoint exported, the curves plotted."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from raydr.config import RaydrConfig
from raydr.tuning.confirm import Validate
from raydr.validation import retention

log = logging.getLogger(__name__)


def summarize(
    cfg: RaydrConfig,
    grid,
    metric: str,
    total_steps: int,
    progress: dict[str, int] | None = None,
    rungs: tuple[int, ...] = (),
    score_on_full_corpus: Validate | None = None,
) -> dict[str, Any]:
    """``progress``: each trial's newest finished training step (the pool's heartbeats; a
    stopped trial ran past its last report); ``rungs``: ASHA's rung checkpoints, whose decision
    lags the summary gives; ``score_on_full_corpus``: validates checkpoints on the full corpus, to
    confirm the top ``tune.confirm_top_k`` trials (None: the winner is named on the subset)."""
    from raydr import atomic
    from raydr.validation.ledger import VALIDATED_STEP, Ledger
    from raydr.validation.report import best_row, export, plot_curves

    ledger = Ledger.for_run(cfg)
    run_dir = cfg.paths.run_dir
    trials, stopped = [], set()
    state = ledger.state()
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
        closed = [r for (t, _), r in state.items() if t == trial_id]
        lags = decision_lags(received, rungs, None if complete else reached)
        trials.append(
            {
                "trial": trial_id,
                "config": {k: v for k, v in (result.config or {}).items()},
                "best_metric": best["metrics"][metric] if best else None,
                "best_step": best["step"] if best else None,
                "checkpoint": best["checkpoint"] if best else None,
                "validated_checkpoints": len(rows),
                "cancelled_checkpoints": sum(r["status"] == "cancelled" for r in closed),
                "last_training_step": reached,
                "stopped_early": not complete,
                # The validated step whose metric stopped it: its last report's.
                "decided_on_step": None if complete else metrics.get(VALIDATED_STEP),
                "decision_lag_steps": lags,
                "error": str(result.error) if result.error else None,
            }
        )
    sign = 1 if cfg.tune.mode == "max" else -1
    scored = sorted(
        (t for t in trials if t["best_metric"] is not None), key=lambda t: -sign * t["best_metric"]
    )
    best_trial = scored[0] if scored else None
    confirmation = None
    if score_on_full_corpus is not None and cfg.tune.confirm_top_k and scored:
        confirmation = _confirm(scored[: cfg.tune.confirm_top_k], metric, cfg, score_on_full_corpus)
        if "winner" in confirmation:
            full = {c["trial"]: c["full"] for c in confirmation["trials"]}
            for t in trials:
                t["full_corpus_metric"] = full.get(t["trial"])
            best_trial = next(t for t in trials if t["trial"] == confirmation["winner"])
    exported = None
    if best_trial is not None:
        exported = str(export({"checkpoint": best_trial["checkpoint"]}, run_dir / "best_model"))
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
        "rung_wait": cfg.tune.rung_wait,
        "winner_named_on": "full corpus" if confirmation and "winner" in confirmation else "subset",
        "confirmation": confirmation,
        "validation": validation_work(ledger, cfg.tune.stopped_checkpoints),
        "disk": retention.disk(cfg, trials=[t["trial"] for t in trials]),
    }
    atomic.write_json(run_dir / "summary.json", summary)
    return summary


def _confirm(top: list[dict[str, Any]], metric: str, cfg: RaydrConfig, validate) -> dict:
    """The full-corpus confirmation of ``top``; a failure leaves the subset's winner standing,
    with a warning, rather than losing the search's results."""
    from raydr.tuning.confirm import confirm

    candidates = [
        {
            "trial": t["trial"],
            "step": t["best_step"],
            "checkpoint": t["checkpoint"],
            "subset": t["best_metric"],
        }
        for t in top
    ]
    try:
        return confirm(candidates, metric, cfg.tune.mode, validate)
    except Exception as exc:  # a pruned checkpoint, a validator lost: keep what the search found
        log.warning("full-corpus confirmation failed (%s); the winner is named on the subset", exc)
        return {"error": f"{type(exc).__name__}: {exc}"}


def validation_work(ledger, policy: str) -> dict[str, Any]:
    """What the validators did: checkpoints by outcome, validator-seconds spent (each done row's
    ``validation_s``), and an estimate of those saved by cancelling (each cancelled checkpoint
    at the mean cost of a done one)."""
    closed = [r for r in ledger.state().values() if r["status"] != "pending"]
    seconds = [
        float(r["metrics"].get("validation_s", 0.0)) for r in closed if r["status"] == "done"
    ]
    cancelled = sum(r["status"] == "cancelled" for r in closed)
    mean = sum(seconds) / len(seconds) if seconds else 0.0
    return {
        "stopped_checkpoints": policy,
        "done": len(seconds),
        "failed": sum(r["status"] == "failed" for r in closed),
        "cancelled": cancelled,
        "validator_seconds": sum(seconds),
        "validator_seconds_saved_estimate": cancelled * mean,
    }


def format_summary(summary: dict[str, Any]) -> str:
    metric = summary["metric"]
    lines = [f"{'trial':<14} {metric:>9} {'full':>7} {'at step':>8} {'stopped':>10}  config"]
    for t in sorted(summary["trials"], key=lambda t: -(t["best_metric"] or -1)):
        value = f"{t['best_metric']:.4f}" if t["best_metric"] is not None else "-"
        full = f"{t['full_corpus_metric']:.4f}" if t.get("full_corpus_metric") is not None else "-"
        stop = f"at {t['last_training_step']}" if t["stopped_early"] else "no"
        lines.append(
            f"{t['trial']:<14} {value:>9} {full:>7} {t['best_step'] or '-':>8} {stop:>10}  "
            f"{t['config']}"
        )
    lines.append(f"({metric}: best checkpoint on the validation subset; full: on the full corpus)")
    if summary.get("disk"):
        lines.append(retention.describe(summary["disk"]))
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
    conf = summary.get("confirmation") or {}
    if "winner" in conf:
        tau = conf["kendall_tau"]
        lines.append(
            f"winner on the full corpus ({conf['corpus_size']} docs): {conf['winner']}"
            f"{' (the subset named ' + conf['subset_winner'] + ')' if conf['winner_changed'] else ', as on the subset'}"
            f"; Kendall tau of the top {len(conf['trials'])}, subset vs full: "
            f"{'-' if tau is None else f'{tau:.2f}'}"
        )
    elif "error" in conf:
        lines.append(
            f"full-corpus confirmation failed ({conf['error']}): winner named on the subset"
        )
    work = summary.get("validation")
    if work:
        lines.append(
            f"validation: {work['done']} checkpoints done, {work['cancelled']} cancelled, "
            f"{work['failed']} failed; {work['validator_seconds']:.0f} validator-seconds"
            + (
                f" (about {work['validator_seconds_saved_estimate']:.0f} saved by cancelling)"
                if work["cancelled"]
                else ""
            )
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
