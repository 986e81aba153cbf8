"""Run (or resume) a search: size trials beside the validators, build the scheduler on the
validated step, start the shared validation pool, and hand the results to ``summary``."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

from raydr import capacity
from raydr.config import RaydrConfig
from raydr.errors import RaydrError

log = logging.getLogger(__name__)


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


def _search_alg(cfg: RaydrConfig, metric: str, max_concurrent: int):
    """``random`` samples each distribution (grids expanded); ``grid`` runs exactly the grid
    (``parse_space`` refuses anything else); both seeded by ``tune.seed`` (default: ``seed``)."""
    seed = cfg.seed if cfg.tune.seed is None else cfg.tune.seed
    if cfg.tune.search_alg == "optuna":
        try:
            from ray.tune.search.optuna import OptunaSearch
        except ImportError:
            raise RaydrError("tune.search_alg=optuna needs `pip install optuna`") from None
        return OptunaSearch(metric=metric, mode=cfg.tune.mode, seed=seed)
    from ray.tune.search.basic_variant import BasicVariantGenerator

    # A generator, not a Searcher: Tune ignores TuneConfig.max_concurrent_trials for it, so it
    # carries the limit itself.
    return BasicVariantGenerator(random_state=seed, max_concurrent=max_concurrent)


def total_training_steps(cfg: RaydrConfig) -> int:
    """A trial's steps at its smallest world size (to ``stop_at``): the scheduler's ``max_t``."""
    from raydr.data.groups import build_rows, load_negatives
    from raydr.training import plan

    t = cfg.training
    negatives = load_negatives(t.negatives) if t.negatives else None
    rows = build_rows(cfg.data.path, t.split, negatives)
    return plan.last_step(t, plan.total_steps(t, len(rows), plan.world_sizes(t)[0]))


def run_search(cfg: RaydrConfig) -> dict[str, Any]:
    """Run (or resume) the search; → summary dict (also written to ``run_dir/summary.json``)."""
    import ray
    from ray import tune

    from raydr import tracking
    from raydr.connect import init_ray
    from raydr.training.preflight import preflight
    from raydr.training.trainer import check_capacity
    from raydr.tuning.callbacks import LagWatch, PoolStopped, ReleaseStopped
    from raydr.tuning.scheduler import build_scheduler, rung_checkpoints
    from raydr.tuning.space import check_metric, parse_space
    from raydr.tuning.summary import summarize
    from raydr.tuning.trial import tune_trial
    from raydr.validation.pool import demand as validator_demand
    from raydr.validation.pool import pool_name, start_pool, wait_idle

    cfg = cfg.with_absolute_paths()  # once, here: trials and actors run in other folders
    metric = check_metric(cfg)
    space = parse_space(cfg)
    preflight(cfg)
    paths = cfg.paths
    log.info("storage:\n%s", paths.describe())
    # Before Ray starts: an edited rerun fails in a line, without starting anything.
    path = Path(paths.tune_storage) / cfg.name
    resuming = tune.Tuner.can_restore(str(path))
    check_same_search(cfg, paths.run_dir / "search_config.json", resuming)
    init_ray(cfg)
    check_capacity(cfg, also=[validator_demand(cfg)])
    if cfg.tune.scheduler.type != "none":
        warn_without_state_api()
    total = ray.cluster_resources()
    max_conc = (
        concurrency(cfg, total)
        if cfg.tune.max_concurrent_trials == "auto"
        else cfg.tune.max_concurrent_trials
    )
    if cfg.tune.max_concurrent_trials == "auto" and capacity.autoscaling(cfg.ray.autoscaler):
        log.warning(
            "tune.max_concurrent_trials=auto counts the nodes up now (%d trial(s) fit); the "
            "autoscaler adds nodes only for trials that run, so set it to the trials you want "
            "at once (and size max_workers for them: cluster/README.md)",
            max_conc,
        )
    samples = 2 * max_conc if cfg.tune.num_samples == "auto" else cfg.tune.num_samples
    steps = total_training_steps(cfg)
    # Reports without a validated metric yet are normal here: the scheduler skips them.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    pool = start_pool(cfg)
    rungs = rung_checkpoints(cfg, steps) if cfg.tune.scheduler.type == "asha" else ()
    hold = cfg.tune.rung_wait == "until_validated"
    if hold:
        log.info("trials pause at the rung checkpoints %s until the scheduler decides", rungs)
    callbacks = [
        LagWatch(cfg.training.checkpoint_every, cfg.tune.rung_wait),
        ReleaseStopped(cfg.name),
    ]
    callbacks.append(PoolStopped(pool_name(cfg.name), cfg.tune.stopped_checkpoints == "cancel"))
    tracker = tracking.tune_callback(cfg)  # one run per trial (MLflow, W&B), if tracking is on
    if tracker is not None:
        callbacks.append(tracker)
    trainable = tune.with_resources(
        tune.with_parameters(
            tune_trial,
            base=_trial_base(cfg),
            pool=pool_name(cfg.name),
            rungs=rungs,
            hold=hold,
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
                max_concurrent_trials=max_conc if cfg.tune.search_alg == "optuna" else None,
                scheduler=build_scheduler(cfg, metric, steps, pool_name(cfg.name)),
                search_alg=_search_alg(cfg, metric, max_conc),
            ),
            run_config=tune.RunConfig(
                name=cfg.name,
                storage_path=paths.tune_storage,
                callbacks=callbacks,
            ),
        )
    grid = tuner.fit()
    try:
        wait_idle(pool)  # checkpoints of stopped trials may still be being validated
        ray.get(pool.settle.remote())  # what stopped trials committed but never handed over
        progress = ray.get(pool.progress.remote())  # where each trial's training really got to
    finally:
        ray.get(pool.close.remote())
        ray.kill(pool)
    return summarize(
        cfg,
        grid,
        metric,
        steps,
        progress=progress,
        rungs=rungs,
        score_on_full_corpus=lambda pairs: confirm_on_full_corpus(cfg, pairs),
    )


def _trial_base(cfg: RaydrConfig) -> dict[str, Any]:
    """The config each trial starts from. A driver inside `ray job submit` joined the cluster
    through RAY_ADDRESS, which trials do not see: they get it as ``ray.address``, so that
    ``training.use_gpu: auto`` decides for the cluster's workers, not the CPU head's."""
    tree = cfg.model_dump(mode="json")
    if tree["ray"]["address"] is None and os.environ.get("RAY_ADDRESS"):
        tree["ray"]["address"] = os.environ["RAY_ADDRESS"]
    return tree


def confirm_on_full_corpus(cfg: RaydrConfig, pairs: list[tuple[str, int]]) -> list[dict[str, Any]]:
    """Each (checkpoint, step) validated on the full corpus, each split into as many shards as
    the pool had validators (``raydr.validation.scatter``): the search is over, so its
    validators' resources are free, and every checkpoint's shards are started at once. With
    ``validation.also``, one whole validator per checkpoint instead, over every dev set."""
    import ray

    from raydr.validation.scatter import gather, scatter
    from raydr.validation.validator import validate_on_full_corpus

    v = cfg.validation
    if v.also:
        # The primary metric is a weighted mean over several dev sets, and a shard scores one:
        # a whole validator per checkpoint, over every dev set's full corpus.
        cpus = max(1.0, v.num_cpus)
        task = ray.remote(validate_on_full_corpus).options(
            num_cpus=cpus, num_gpus=v.num_gpus, resources=dict(v.resources) or None
        )
        return ray.get([task.remote(cfg, path, step, int(cpus)) for path, step in pairs])
    started = [(scatter(cfg, path, v.num_actors), step) for path, step in pairs]
    return [gather(cfg, refs, step) for refs, step in started]


def warn_without_state_api() -> None:
    """Ray Train frees a stopped trial's placement group only once its cleaner sees, through
    Ray's State API (served by the dashboard), that the trial's controller is gone. Without it
    every trial the scheduler stops keeps its resources until the search ends (seen here: the
    next trial waited for a worker group that could never start; ray-project/ray#54305)."""
    from ray.util.state import list_actors

    try:
        list_actors(limit=1, timeout=10, raise_on_missing_output=False)
    except Exception as exc:  # the State API raises several kinds, all meaning "not there"
        log.warning(
            "Ray's State API is unreachable (%s): trials the scheduler stops will not give "
            "their resources back until the search ends. Start Ray with its dashboard "
            "(pip install 'ray[default]'; no --include-dashboard=false)",
            str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
        )


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


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
