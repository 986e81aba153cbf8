"""Refit on train + dev: ``raydr train CONFIG --refit``, the usual last step of model selection.

A validated run spends its dev queries on choosing a checkpoint. Once chosen, they have nothing
left to select and can be trained on. ``plan`` reads the job's finished run (its ledger) and
derives a new run, ``NAME-refit``, that:

- trains on ``training.split+validation.split``, from the same starting model, with the same
  seed, learning rate and schedule shape;
- stops at dev's selected step, scaled to the larger set: the same passes over the data. For
  example, step 90 of 95 on 609 queries becomes step 118 of 125 on 809. The schedule spans the
  whole scaled run (``training.stop_at``), so the last step trains at the learning rate the
  selected checkpoint had;
- validates nothing, since no dev is left. Its last checkpoint is the model, scored once on
  ``data.split`` (test).

A refit is no better by construction: 200 more queries against a pick made without them. So
the dev-selected checkpoint remains the claim unless test says otherwise.
(``raydr compare CONFIG --baseline runs/NAME --run runs/NAME-refit`` gives the paired test.)
Dev sets of other collections (``validation.also``) stay out of training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from raydr.config import RaydrConfig
from raydr.errors import RaydrError

RECORD = "refit.json"  # beside the refit run's metrics: what it was derived from


def refit_split(cfg: RaydrConfig) -> str:
    """``train+dev``: the training split and the validation split, which must be another split
    of the same dataset and must not be the split the job reports on."""
    v, t = cfg.validation, cfg.training
    if not v.enabled:
        raise RaydrError(
            "--refit: validation.enabled is false in the job, so no step was selected on dev "
            "to refit to"
        )
    if v.split == cfg.data.split:
        raise RaydrError(
            f"--refit: validation.split {v.split!r} is data.split, the split the job reports "
            "on; a refit would train on its test queries. Carve a dev split "
            "(raydr import-beir --dev-from train) and select on it"
        )
    if v.split in t.split.split("+"):
        raise RaydrError(
            f"--refit: training.split {t.split!r} already holds validation.split {v.split!r}"
        )
    return f"{t.split}+{v.split}"


def plan(cfg: RaydrConfig) -> tuple[RaydrConfig, dict[str, Any]]:
    """→ (the refit's config, its record) for a job whose run has validated checkpoints."""
    from raydr import config
    from raydr.data.groups import build_rows, load_negatives
    from raydr.training import plan as steps
    from raydr.validation.ledger import Ledger
    from raydr.validation.report import best_row

    split = refit_split(cfg)
    t, metric = cfg.training, cfg.eval.primary_metric
    try:  # find, not for_run: a mistyped name must not leave an empty run folder behind
        ledger = Ledger.find(cfg.paths.run_dir)
    except RaydrError:
        raise RaydrError(
            f"--refit: {cfg.paths.run_dir}: no validated run of {cfg.name!r}; run `raydr "
            "train` on the job first, then refit to the step it selects"
        ) from None
    best = best_row(ledger.results(cfg.name), metric)
    if best is None:
        raise RaydrError(f"--refit: {ledger.path}: no checkpoint of {cfg.name!r} has {metric}")
    negatives = load_negatives(t.negatives) if t.negatives else None
    trained = build_rows(cfg.data.path, t.split, negatives)
    rows = build_rows(cfg.data.path, split, negatives)
    _check_negatives(cfg, rows, {r.query_id for r in trained})

    world = steps.world_sizes(t)[1]
    per_epoch = [
        steps.steps_per_epoch(len(r), world, t.batch_size, t.grad_accum) for r in (trained, rows)
    ]
    scale = per_epoch[1] / per_epoch[0]
    stop_at = max(1, round(best["step"] * scale))
    max_steps = max(stop_at, round(t.max_steps * scale)) if t.max_steps else None
    tree = cfg.model_dump(mode="json")
    tree["name"] = f"{cfg.name}-refit"
    tree["training"] |= {"split": split, "stop_at": stop_at, "max_steps": max_steps}
    tree["validation"]["enabled"] = False
    refit = config.build(tree, f"refit of {cfg.name}")
    schedule = steps.total_steps(refit.training, len(rows), world)
    record = {
        "run": cfg.name,
        "ledger": str(ledger.path.resolve()),
        "metric": metric,
        "selected_step": best["step"],
        "selected_score": best["metrics"][metric],
        "selected_checkpoint": best["checkpoint"],
        "split": split,
        "queries": {"trained": len(trained), "refit": len(rows)},
        "steps_per_epoch": {"trained": per_epoch[0], "refit": per_epoch[1]},
        "stop_at": stop_at,
        "schedule_steps": schedule,
    }
    return refit, record


def _check_negatives(cfg: RaydrConfig, rows: list, trained: set[str]) -> None:
    """Every dev query joins training with the hard negatives its group needs, or the refit
    says how to mine them (rather than preflight's generic 'mine more negatives')."""
    need = cfg.training.group_size - 1
    lacking = [r.query_id for r in rows if r.query_id not in trained and len(r.negatives) < need]
    if need > 0 and lacking:
        raise RaydrError(
            f"--refit: training.negatives {cfg.training.negatives} has fewer than {need} "
            f"negatives for {len(lacking)} {cfg.validation.split!r} queries (e.g. "
            f"{lacking[0]!r}); add them with `raydr mine-negatives CONFIG --refit`"
        )


def describe(record: dict[str, Any]) -> str:
    """One paragraph for the terminal: what the refit trains on and where it stops."""
    q, spe = record["queries"], record["steps_per_epoch"]
    return (
        f"refit of {record['run']}: {record['metric']} on dev picked step "
        f"{record['selected_step']} ({record['selected_score']:.4f}); training on "
        f"{record['split']} ({q['refit']} queries, {q['trained']} before) to step "
        f"{record['stop_at']} of a {record['schedule_steps']}-step schedule "
        f"({spe['refit']} steps per epoch, {spe['trained']} before: the same passes over the "
        "data), without validation"
    )


def write_record(refit: RaydrConfig, record: dict[str, Any]) -> Path:
    """``RUN/refit.json``, written atomically."""
    from raydr.atomic import write_json

    path = Path(refit.paths.run_dir) / RECORD
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, record)
    return path
