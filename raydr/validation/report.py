"""Reading a run's ledger: the best checkpoint, exports, and the validation-curve plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from raydr.errors import RaydrError
from raydr.validation.ledger import Ledger


def best_row(rows: list[dict[str, Any]], metric: str) -> dict[str, Any] | None:
    """Highest ``metric`` among done rows; ties go to the earlier step (less training)."""
    scored = [r for r in rows if metric in r.get("metrics", {})]
    if not scored:
        return None
    return max(scored, key=lambda r: (r["metrics"][metric], -r["step"]))


def export(row: dict[str, Any], out: str | Path) -> Path:
    """Export the row's checkpoint as a model folder (Hugging Face + sentence-transformers)."""
    from raydr.training import checkpoint

    src = Path(row["checkpoint"])
    if not src.is_dir():
        raise RaydrError(f"{src}: the best checkpoint is gone (was it pruned by num_to_keep?)")
    return checkpoint.export(src, out)


def curves(
    rows: list[dict[str, Any]], metric: str
) -> dict[tuple[str, str], list[tuple[int, float]]]:
    """(trial, series) → [(step, value)] in step order: ``metric`` itself, and each part of it
    (``METRIC/NAME``, one per dev set of ``validation.also``) as its own series."""
    out: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for r in sorted(rows, key=lambda r: r["step"]):
        for key, value in r.get("metrics", {}).items():
            if key == metric or key.startswith(f"{metric}/"):
                out.setdefault((r["trial"], key), []).append((r["step"], value))
    return out


def plot_curves(
    ledger: Ledger,
    metric: str,
    out: str | Path | None = None,
    stopped: set[str] | None = None,
    labels: dict[str, str] | None = None,
) -> Path:
    """PNG of ``metric`` against step, one line per trial; early-stopped trials marked ×.
    Where several dev sets make up the metric, each one's curve is dashed beside it.
    ``labels``: legend text per trial (e.g. its config)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from raydr.atomic import save_figure

    out = Path(out) if out else ledger.path.with_name("validation_curve.png")
    fig, ax = plt.subplots(figsize=(7, 4))
    series = curves(ledger.results(), metric)
    trials = sorted({trial for trial, _ in series})
    for trial in trials:
        label = f"{trial} {labels[trial]}" if labels and trial in labels else trial
        color = None
        for (t, key), pts in series.items():
            if t != trial:
                continue
            xs, ys = zip(*pts, strict=True)
            part = key != metric
            line = ax.plot(
                xs,
                ys,
                marker="." if part else "o",
                linestyle="--" if part else "-",
                color=color,
                label=f"{label} {key.split('/', 1)[1]}" if part else label,
            )[0]
            color = color or line.get_color()  # a trial's parts share its colour
            if not part and stopped and trial in stopped:
                ax.plot(xs[-1], ys[-1], marker="x", markersize=12, color=line.get_color())
    ax.set_xlabel("training step of the validated checkpoint")
    ax.set_ylabel(f"{metric} (validation subset)")
    ax.set_title("Asynchronous validation" + (" (× = stopped early)" if stopped else ""))
    if trials:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    save_figure(fig, out)
    plt.close(fig)
    return out
