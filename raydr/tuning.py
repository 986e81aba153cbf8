"""``raydr tune``: a Ray Tune search whose scheduler reads *validation* retrieval quality.

Each trial is a Tune function that builds its own TorchTrainer (Ray Train V2 cannot be handed to
a Tuner). All trials push checkpoints to one shared validation pool. Rank 0 of each trial puts
the newest validated metrics of its own checkpoints into every report, with
``validated_step``, the step they were measured on; the scheduler's time attribute is that
step, so a trial is only ever compared at a checkpoint that was really validated. After training
a trial keeps reporting until its last checkpoints are validated, and a trial the scheduler stops
still has its submitted checkpoints validated, because the pool owns that work.
"""

from __future__ import annotations

import copy
import difflib
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from raydr.config import RaydrConfig
from raydr.errors import RaydrError

log = logging.getLogger(__name__)

DISTRIBUTIONS = ("choice", "grid", "uniform", "loguniform", "randint")
TIME_ATTR = "validated_step"


# ---------------------------------------------------------------- the search space


def _leaf_paths(model: type[BaseModel] = RaydrConfig, prefix: str = "") -> list[str]:
    out = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += _leaf_paths(ann, f"{prefix}{name}.")
        else:
            out.append(f"{prefix}{name}")
    return out


def _with(tree: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    new = copy.deepcopy(tree)
    node = new
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value
    return new


def parse_space(cfg: RaydrConfig) -> dict[str, Any]:
    """``tune.space`` → ``{dotted field: tune domain}``; every error is found before a trial runs."""
    from ray import tune

    leaves = set(_leaf_paths()) - {"tune.space"}
    base = cfg.model_dump(mode="json")
    domains: dict[str, Any] = {}
    if not cfg.tune.space:
        raise RaydrError("tune.space is empty: name at least one config field to search")
    for dotted, spec in cfg.tune.space.items():
        where = f"tune.space.{dotted}"
        if dotted not in leaves:
            close = difflib.get_close_matches(dotted, sorted(leaves), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise RaydrError(f"{where}: no such config field{hint}")
        if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
            raise RaydrError(
                f"{where}: expected one of {{{', '.join(DISTRIBUTIONS)}}}: ..., got {spec!r}"
            )
        kind, arg = next(iter(spec.items()))
        if kind in {"choice", "grid"}:
            if not isinstance(arg, list) or not arg:
                raise RaydrError(f"{where}: {kind} needs a non-empty list of values, got {arg!r}")
            candidates = list(arg)
            domains[dotted] = tune.choice(arg) if kind == "choice" else tune.grid_search(arg)
        else:
            ok = (
                isinstance(arg, list)
                and len(arg) == 2
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in arg)
                and arg[0] < arg[1]
                and (kind != "loguniform" or arg[0] > 0)
            )
            if not ok:
                need = "0 < low < high" if kind == "loguniform" else "low < high"
                raise RaydrError(f"{where}: {kind} needs [low, high] with {need}, got {arg!r}")
            candidates = [arg[0], arg[1] - (1 if kind == "randint" else 0)]
            domains[dotted] = getattr(tune, kind)(*arg)
        for value in candidates:  # the field's own type and bounds apply to every candidate
            try:
                RaydrConfig.model_validate(_with(base, dotted, value))
            except ValidationError as exc:
                msg = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
                raise RaydrError(f"{where}: value {value!r} is not valid: {msg}") from None
    return domains


def check_metric(cfg: RaydrConfig) -> str:
    metric = cfg.tune.metric or cfg.eval.primary_metric
    if metric not in cfg.eval.metrics:
        raise RaydrError(
            f"tune.metric {metric!r} is not produced by the validators (eval.metrics: "
            f"{', '.join(cfg.eval.metrics)})"
        )
    return metric


# ---------------------------------------------------------------- sizing


def trial_resources(cfg: RaydrConfig) -> dict[str, float]:
    t = cfg.training
    workers = t.num_workers[0] if isinstance(t.num_workers, tuple) else t.num_workers
    per = {k: v * workers for k, v in t.resources_per_worker.items()}
    per["CPU"] = per.get("CPU", 0.0) + cfg.tune.trial_cpus
    return per


def concurrency(cfg: RaydrConfig, total: dict[str, float]) -> int:
    """How many trials fit beside the validator pool's reservations."""
    v = cfg.validation
    pool = {"CPU": v.num_cpus * v.num_actors, "GPU": v.num_gpus * v.num_actors}
    fits = []
    for name, need in trial_resources(cfg).items():
        if need <= 0:
            continue
        free = total.get(name, 0.0) - pool.get(name, 0.0)
        fits.append(math.floor(free / need + 1e-9))
    n = min(fits) if fits else 1
    if n < 1:
        raise RaydrError(
            f"one trial needs {trial_resources(cfg)} beside the validators' {pool}, but the cluster "
            f"has {total}; lower training.num_workers or validation.num_actors"
        )
    return n


# ---------------------------------------------------------------- the trial


def tune_trial(params: dict[str, Any], base: dict[str, Any], pool: str, storage: str) -> None:
    """One trial: its config, a TorchTrainer reporting through Tune, then the last validations."""
    import ray
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from raydr.training.trainer import build_trainer
    from raydr.validation.pool import NAMESPACE

    trial = tune.get_context().get_trial_id()
    tree = copy.deepcopy(base)
    for dotted, value in params.items():
        tree = _with(tree, dotted, value)
    tree["name"] = f"{base['name']}-{trial}"
    tree["training"]["storage_path"] = storage
    cfg = RaydrConfig.model_validate(tree)
    trainer = build_trainer(
        cfg, callbacks=[TuneReportCallback()], pool=pool, trial=trial, report_validation=True
    )
    result = trainer.fit()
    if result.error:
        raise result.error
    # Training is over; report the validations that were still running so the scheduler and
    # the results see every checkpoint's metric.
    handle = ray.get_actor(pool, namespace=NAMESPACE)
    metric = cfg.tune.metric or cfg.eval.primary_metric
    total = result.metrics["step"]
    seen = result.metrics.get(TIME_ATTR, -1)
    while True:
        rows = ray.get(handle.results.remote(trial))
        for row in rows:
            if row["step"] > seen:
                seen = row["step"]
                tune.report({**_validated(row, metric, total), "step": total})
        owed = ray.get(handle.owed.remote(trial))
        if not owed:
            break
        time.sleep(1.0)
    tune.report(
        {
            "trial_complete": 1,
            "step": total,
            **(_validated(rows[-1], metric, total) if rows else {}),
        }
    )


def _validated(row: dict[str, Any], metric: str, step: int) -> dict[str, Any]:
    return {
        metric: row["metrics"][metric],
        TIME_ATTR: row["step"],
        "validation_lag_steps": step - row["step"],
    }


# ---------------------------------------------------------------- the search


def _scheduler(cfg: RaydrConfig, metric: str, total_steps: int):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule

    s = cfg.tune.scheduler
    if s.type == "none":
        return FIFOScheduler()
    if s.type == "median":
        return MedianStoppingRule(
            time_attr=TIME_ATTR, metric=metric, mode=cfg.tune.mode, grace_period=s.grace_period
        )
    return ASHAScheduler(
        time_attr=TIME_ATTR,
        metric=metric,
        mode=cfg.tune.mode,
        max_t=s.max_t or total_steps,
        grace_period=s.grace_period,
        reduction_factor=s.reduction_factor,
    )


def _search_alg(cfg: RaydrConfig, metric: str):
    if cfg.tune.search_alg != "optuna":
        return None  # Tune's default: random sampling, grid_search expanded
    try:
        from ray.tune.search.optuna import OptunaSearch
    except ImportError:
        raise RaydrError("tune.search_alg=optuna needs `pip install optuna`") from None
    return OptunaSearch(metric=metric, mode=cfg.tune.mode, seed=cfg.tune.seed)


def total_training_steps(cfg: RaydrConfig) -> int:
    from raydr.data.groups import build_rows, load_negatives, shard

    t = cfg.training
    if t.max_steps:
        return t.max_steps
    negatives = load_negatives(t.negatives) if t.negatives else None
    rows = build_rows(cfg.data.path, t.split, negatives)
    world = t.num_workers[0] if isinstance(t.num_workers, tuple) else t.num_workers
    return len(shard(len(rows), 0, cfg.seed, 0, world, t.batch_size)) // t.grad_accum * t.epochs


def run_search(cfg: RaydrConfig) -> dict[str, Any]:
    """Run (or resume) the search; → summary dict (also written to ``run_dir/summary.json``)."""
    import ray
    from ray import tune

    from raydr.training.trainer import check_capacity, init_ray, preflight
    from raydr.validation.pool import pool_name, start_pool, wait_idle

    metric = check_metric(cfg)
    space = parse_space(cfg)
    preflight(cfg)
    # Before Ray starts: an edited rerun fails in a line, without starting anything.
    path = Path(cfg.tune.storage_path).resolve() / cfg.name
    resuming = tune.Tuner.can_restore(str(path))
    check_same_search(cfg, cfg.with_absolute_paths().run_dir / "search_config.json", resuming)
    init_ray(cfg)
    check_capacity(cfg)
    cfg = cfg.with_absolute_paths()
    total = ray.cluster_resources()
    max_conc = (
        concurrency(cfg, total)
        if cfg.tune.max_concurrent_trials == "auto"
        else cfg.tune.max_concurrent_trials
    )
    samples = 2 * max_conc if cfg.tune.num_samples == "auto" else cfg.tune.num_samples
    steps = total_training_steps(cfg)
    # Reports without a validated metric yet are normal here: the scheduler skips them.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    pool = start_pool(cfg)
    storage = str(Path(cfg.tune.storage_path).resolve())
    trainable = tune.with_resources(
        tune.with_parameters(
            tune_trial,
            base=cfg.model_dump(mode="json"),
            pool=pool_name(cfg.name),
            storage=str(Path(storage) / f"{cfg.name}-trials"),
        ),
        {"cpu": cfg.tune.trial_cpus},
    )
    if resuming:
        log.info("resuming the search at %s", path)
        tuner = tune.Tuner.restore(
            str(path), trainable, resume_unfinished=True, resume_errored=True
        )
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=space,
            tune_config=tune.TuneConfig(
                num_samples=samples,
                max_concurrent_trials=max_conc,
                scheduler=_scheduler(cfg, metric, steps),
                search_alg=_search_alg(cfg, metric),
            ),
            run_config=tune.RunConfig(name=cfg.name, storage_path=storage),
        )
    grid = tuner.fit()
    wait_idle(pool)  # checkpoints of stopped trials are still being validated
    ray.get(pool.close.remote())
    ray.kill(pool)
    return summarize(cfg, grid, metric, steps)


def check_same_search(cfg: RaydrConfig, record: Path, resuming: bool) -> None:
    """Tune restores a search with the space, scheduler and searcher it started with, so an
    edited config would be silently ignored on a rerun: refuse it, naming what changed. The
    config is compared as declared (relative paths), since a job's working dir moves between
    submissions; the ``ray`` section may change (a resumed search may get a bigger cluster)."""
    import json

    from raydr import atomic

    now = cfg.model_dump(mode="json", exclude={"ray"})
    if resuming and record.exists():
        try:
            before = json.loads(record.read_text())
        except ValueError as exc:
            raise RaydrError(f"{record}: not valid JSON ({exc}); delete it to resume") from None
        old, new = _flatten(before), _flatten(now)
        changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        if changed:
            raise RaydrError(
                f"search {cfg.name!r} was started with a different config ({record}); changed: "
                f"{', '.join(changed[:6])}{' …' if len(changed) > 6 else ''}. Rerun it as it was "
                f"to resume it, or start a new search with name=<new name>"
            )
    else:
        atomic.write_json(record, now)


def _short_config(config: dict[str, Any]) -> str:
    """{'training.lr': 5e-05} → 'lr=5e-05', for legends."""
    return ", ".join(
        f"{key.rsplit('.', 1)[-1]}={value:g}"
        if isinstance(value, float)
        else f"{key.rsplit('.', 1)[-1]}={value}"
        for key, value in config.items()
    )


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def summarize(cfg: RaydrConfig, grid, metric: str, total_steps: int) -> dict[str, Any]:
    from raydr import atomic
    from raydr.validation.ledger import Ledger
    from raydr.validation.report import best_row, export, plot_curves

    ledger_path = cfg.run_dir.resolve() / "validation" / "ledger.jsonl"
    ledger = Ledger(ledger_path)
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
        exported = str(export(row, cfg.run_dir.resolve() / "best_model"))
    png = plot_curves(
        ledger_path,
        metric,
        cfg.run_dir.resolve() / "tune_curves.png",
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
    atomic.write_json(cfg.run_dir.resolve() / "summary.json", summary)
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
