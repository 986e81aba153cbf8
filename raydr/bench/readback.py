"""``raydr bench tracking CONFIG``: a finished job's tracking run, read back against its ledger.

It trains nothing: it reads what ``raydr train CONFIG`` left, the way a user would. MLflow's run
is found with ``mlflow.search_runs`` in the job's store and its ``validation/<metric>`` history
read per step; an offline W&B group is read from its run files. Each validated step is then set
beside the ledger's row for the same checkpoint. The headline: how many steps agree exactly, and
the largest difference. It also counts the params, the steps rank 0's reports landed at, and the
model's files. The plot overlays the two curves.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from raydr.errors import RaydrError
from raydr.verb import Verb


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="the job YAML whose finished run to read back")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.add_argument("--out", type=Path, default=Path("bench-out/tracking-readback.json"))


def _mlflow(cfg, metric: str) -> dict[str, Any]:
    import mlflow
    from mlflow.tracking import MlflowClient

    from raydr.tracking import VALIDATION, metric_name
    from raydr.tracking.mlflow_run import store_uri

    uri, before = store_uri(cfg), mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        runs = mlflow.search_runs(experiment_names=[cfg.tracking.experiment or cfg.name])
    finally:
        mlflow.set_tracking_uri(before)
    if len(runs) != 1:
        raise RaydrError(f"{uri}: expected one MLflow run of {cfg.name}, found {len(runs)}")
    run = runs.iloc[0]
    client = MlflowClient(uri)
    tracked = client.get_metric_history(run.run_id, VALIDATION + metric_name(metric))
    return {
        "run_id": run.run_id,
        "status": run["status"],
        "params": sorted(c[len("params.") :] for c in runs.columns if c.startswith("params.")),
        "report_steps": sorted(m.step for m in client.get_metric_history(run.run_id, "loss")),
        "validated": {m.step: m.value for m in tracked},
        "model_files": sorted(f.path for f in client.list_artifacts(run.run_id, "model")),
    }


def _wandb(cfg, metric: str) -> dict[str, Any]:
    from raydr.testing import wandb_records as wr
    from raydr.tracking import VALIDATION, flat
    from raydr.tracking.wandb_run import STEP

    run_dir = Path(cfg.paths.run_dir)
    try:
        run_id = json.loads((run_dir / "tracking.json").read_text())["run_id"]
        driver, train, validation = (
            wr.run_file(run_dir, run_id + part) for part in ("", "-train", "-validation")
        )
    except (OSError, ValueError, KeyError) as err:
        raise RaydrError(f"{run_dir}: no offline W&B group to read back ({err})") from None
    rows = wr.history(validation)
    models = wr.artifacts(driver)
    return {
        "run_id": run_id,
        "status": "offline files",
        "params": sorted(flat({k: v for k, v in wr.config(driver).items() if k != "_wandb"})),
        "report_steps": [r["_step"] for r in wr.history(train) if "loss" in r],
        "validated": {r[STEP]: r[VALIDATION + metric] for r in rows if STEP in r},
        "model_files": sorted(models[-1]["files"]) if models else [],
    }


def run(args: argparse.Namespace) -> int:
    from raydr import config
    from raydr.bench.common import machine, publish
    from raydr.tracking import flat
    from raydr.validation.ledger import Ledger

    cfg = config.load(args.config, args.overrides).with_absolute_paths()
    metric = cfg.eval.primary_metric
    backend = cfg.tracking.backend
    if backend == "none":
        raise RaydrError(f"{args.config}: tracking.backend is none; nothing to read back")
    tracked = (_mlflow if backend == "mlflow" else _wandb)(cfg, metric)
    config_params = set(flat(cfg.model_dump(mode="json")))
    ledger = {r["step"]: r["metrics"][metric] for r in Ledger.for_run(cfg).results(cfg.name)}
    steps = sorted(set(ledger) | set(tracked["validated"]))
    pairs = [
        {"step": s, "ledger": ledger.get(s), "tracked": tracked["validated"].get(s)} for s in steps
    ]
    both = [p for p in pairs if p["ledger"] is not None and p["tracked"] is not None]
    payload = {
        "machine": machine(),
        "job": cfg.name,
        "backend": backend,
        "metric": metric,
        **{k: v for k, v in tracked.items() if k not in ("validated", "params")},
        "params": len(tracked["params"]),
        "config_params": len(config_params),
        # Fields the config has now and the run does not: added to raydr after the run, or lost.
        "params_missing": sorted(config_params - set(tracked["params"])),
        "steps": pairs,
        "steps_equal": sum(p["ledger"] == p["tracked"] for p in both),
        "steps_in_ledger": len(ledger),
        "max_abs_diff": max((abs(p["ledger"] - p["tracked"]) for p in both), default=None),
    }
    figures = {
        f"validated steps whose tracked {metric} equals the ledger's": (
            f"{payload['steps_equal']} of {payload['steps_in_ledger']}"
        ),
        "largest |tracked - ledger|": payload["max_abs_diff"],
        "params logged / in the config": f"{payload['params']} / {payload['config_params']}",
        "steps with a training report": len(payload["report_steps"]),
        "model files": len(payload["model_files"]),
    }
    publish(payload, args.out, figures, plot)
    return 0


def plot(payload: dict[str, Any], path: Path) -> None:
    from raydr.bench.common import save_figure, subplots

    pairs = payload["steps"]
    fig, ax = subplots(1, 1, figsize=(6, 4))
    for key, style in (("ledger", "-o"), ("tracked", "x")):
        points = [(p["step"], p[key]) for p in pairs if p[key] is not None]
        ax.plot(*zip(*points, strict=True), style, label=f"{key}", markersize=7)
    ax.set_xlabel("checkpoint step")
    ax.set_ylabel(f"{payload['metric']} (validation subset)")
    ax.set_title(f"{payload['job']}: {payload['backend']} run against the ledger")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


VERBS = (
    Verb(
        "tracking",
        "read a finished job's MLflow or W&B run back against its validation ledger",
        add_arguments,
        run,
    ),
)
