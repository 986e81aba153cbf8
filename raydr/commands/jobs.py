"""``raydr train``, ``tune``, ``validate``: the Ray jobs."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from raydr.commands import job_arguments
from raydr.errors import RaydrError
from raydr.verb import Verb


def train(args: argparse.Namespace) -> None:
    from raydr import config, tracking
    from raydr.launch import train

    cfg = config.load(args.config, args.overrides)
    label = "final checkpoint"
    if args.refit:
        from raydr import refit

        cfg, record = refit.plan(cfg)
        print(refit.describe(record), flush=True)
        print(f"refit record: {refit.write_record(cfg, record)}", flush=True)
        label = f"refit to step {record['stop_at']} (dev picked {record['selected_step']})"
    run = tracking.start(cfg)
    try:
        result, validated = train(cfg, tracking=run)
    except BaseException:
        if run is not None:
            run.end(ok=False)
        raise
    if result.error:
        if run is not None:
            run.end(ok=False)
        raise RaydrError(f"training failed: {result.error}")
    print(json.dumps(result.metrics, indent=2, default=str))
    metric = cfg.eval.primary_metric
    chosen = result.checkpoint.path if result.checkpoint else None
    if validated is not None:
        from raydr.validation.ledger import Ledger
        from raydr.validation.report import best_row, plot_curves

        print(f"validation curve: {plot_curves(Ledger.for_run(cfg), metric)}")
        best = best_row(validated, metric)
        if best is not None:
            # Select on the validation split (dev), report on data.split (test), touched once.
            chosen = best["checkpoint"]
            label = f"checkpoint selected on {cfg.validation.split} (step {best['step']})"
            print(
                f"best checkpoint by {metric} on {cfg.validation.split} (validation subset): step "
                f"{best['step']} = {best['metrics'][metric]:.4f} → {chosen}"
            )
    if validated is not None:
        from raydr.validation import retention

        print(retention.describe(retention.disk(cfg.with_absolute_paths())))
    if run is not None:
        _track_model(run, chosen)
    if chosen is None or args.no_eval:
        return
    import torch

    from raydr.evaluate import evaluate, format_table

    torch.set_num_threads(os.cpu_count() or 1)  # the driver may have inherited 1 from Ray
    # With a pool, its validators' shape encodes the test corpus in shards side by side
    # (raydr.validation.scatter): on a cluster, every validator GPU share works on it.
    import ray

    pool = cfg.validation.enabled and cfg.validation.mode == "pool"
    shards = cfg.validation.num_actors if pool and ray.is_initialized() else 1
    scored = evaluate(cfg, model_path=chosen, progress=not args.quiet, shards=shards)
    print(format_table(scored))
    print(f"[{label} on {cfg.data.split}, full corpus] → {cfg.paths.run_dir / 'metrics.json'}")


def _track_model(run, chosen: str | None) -> None:
    """The selected checkpoint, exported (weights, tokenizer, no optimizer state), as the
    tracking run's model; then the run is closed."""
    import tempfile

    from raydr.training import checkpoint

    if chosen is not None:
        keep = run.model_dir()  # W&B keeps the files where they are; MLflow copies them
        if keep is not None:
            run.log_model(checkpoint.export(chosen, keep))
        else:
            with tempfile.TemporaryDirectory(prefix="raydr-model-") as tmp:
                run.log_model(checkpoint.export(chosen, Path(tmp) / "model"))
        print(f"tracking: {run.describe()}")
    run.end(ok=True)


def tune(args: argparse.Namespace) -> None:
    from raydr import config
    from raydr.tuning.search import run_search
    from raydr.tuning.summary import format_summary

    cfg = config.load(args.config, args.overrides)
    print(format_summary(run_search(cfg)))


def validate(args: argparse.Namespace) -> None:
    import ray

    from raydr import config
    from raydr.connect import init_ray
    from raydr.training import checkpoint
    from raydr.validation.ledger import Ledger
    from raydr.validation.pool import start_pool, wait_idle
    from raydr.validation.report import plot_curves
    from raydr.validation.watch import Watcher

    cfg = config.load(args.config, args.overrides)
    if not args.checkpoints and args.watch is None:
        raise RaydrError("validate: give checkpoint folders, or --watch DIR")
    for path in args.checkpoints:
        if not Path(path).is_dir():
            raise RaydrError(f"{path}: checkpoint folder not found")
    if args.watch is not None and not args.watch.is_dir():
        raise RaydrError(f"--watch {args.watch}: not a directory")
    init_ray(cfg)
    pool = start_pool(cfg.with_absolute_paths(), retain=False)  # a user's folders: never pruned
    trial = args.trial or cfg.name
    for path in args.checkpoints:
        ray.get(pool.submit.remote(trial, checkpoint.step_of(path), str(Path(path).resolve())))
    if args.watch is not None:
        watcher = Watcher(args.watch, settle_s=args.settle)
        deadline = time.time() + args.timeout if args.timeout else None
        print(f"watching {args.watch} (Ctrl-C to stop)", flush=True)
        try:
            while deadline is None or time.time() < deadline:
                for folder in watcher.poll():
                    step = checkpoint.step_of(folder)
                    if ray.get(pool.submit.remote(trial, step, str(folder.resolve()))):
                        print(f"queued {folder} (step {step})", flush=True)
                time.sleep(args.poll)
        except KeyboardInterrupt:
            pass
    wait_idle(pool)
    rows = ray.get(pool.results.remote(trial))
    ray.get(pool.close.remote())  # stop its dispatcher, so it exits without noise
    ray.kill(pool)
    metric = cfg.eval.primary_metric
    for row in rows:
        print(f"step {row['step']:>7}  {metric} {row['metrics'][metric]:.4f}  {row['checkpoint']}")
    ledger = Ledger.for_run(cfg)
    print(f"ledger: {ledger.path}\nplot: {plot_curves(ledger, metric)}")


def _train_arguments(p: argparse.ArgumentParser) -> None:
    job_arguments(p)
    p.add_argument("--no-eval", action="store_true", help="skip evaluating the final checkpoint")
    p.add_argument(
        "--refit",
        action="store_true",
        help="train NAME-refit on training.split+validation.split to the step this job's run "
        "selected on dev (scaled to the larger set), then score it on data.split",
    )


def _validate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", type=Path)
    p.add_argument("checkpoints", nargs="*", type=Path, help="checkpoint folders to validate")
    p.add_argument("--watch", type=Path, help="validate every complete checkpoint appearing here")
    p.add_argument("--trial", help="ledger trial name (default: the config's name)")
    p.add_argument("--poll", type=float, default=5.0, help="seconds between folder scans")
    p.add_argument(
        "--settle", type=float, default=10.0, help="seconds a foreign folder must stay unchanged"
    )
    p.add_argument(
        "--timeout", type=float, default=0.0, help="stop watching after this many seconds"
    )
    p.set_defaults(overrides=[])


VERBS = (
    Verb(
        "train", "Ray Train dual-encoder training (cross-batch negatives)", _train_arguments, train
    ),
    Verb("tune", "Ray Tune search, early-stopped on validation metrics", job_arguments, tune),
    Verb(
        "validate",
        "validate checkpoints with the actor pool (or --watch a folder)",
        _validate_arguments,
        validate,
    ),
)
