"""``raydr bench losses``: training recipes compared on the same data, model and step budget.

Each arm is the job's config plus a few overrides (the negatives and the loss); everything else,
the step budget included, is the job's. Every arm trains with its checkpoints validated on the
job's validation split (dev), the best checkpoint by the primary metric is selected there, and
only that one is scored on ``data.split`` (test), once. Recorded per arm: test metrics, training
wall time, peak RSS of rank 0's worker, and negatives per query; ratios are against the arm
named ``--baseline``, measured in the same session.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from raydr.verb import Verb

# name → overrides. "{bank}" is replaced by --bank-steps steps' worth of the arm's passages.
ARMS: dict[str, list[str]] = {
    "in-batch": ["training.cross_batch=false", "training.group_size=1"],
    "cross-batch": ["training.cross_batch=true", "training.group_size=1"],
    "cross-batch+bank": [
        "training.cross_batch=true",
        "training.group_size=1",
        "training.memory_bank.size={bank}",
    ],
    "cross-batch+bm25": ["training.cross_batch=true", "training.group_size=2"],
    # GradCache: --gc-factor times the queries per worker, encoded a base batch at a time.
    "cross-batch+bm25+gradcache": [
        "training.cross_batch=true",
        "training.group_size=2",
        "training.batch_size={gc_batch}",
        "training.grad_cache_chunk={gc_chunk}",
    ],
    # The same big batch encoded whole: what GradCache saves in memory (and costs in time).
    "cross-batch+bm25+bigbatch": [
        "training.cross_batch=true",
        "training.group_size=2",
        "training.batch_size={gc_batch}",
    ],
    "self-distillation": [
        "training.loss.type=margin",
        "training.loss.in_batch=true",
        "training.group_size=2",
    ],
    # Dynamic negatives (the validator pool refreshes the index every 20 steps and Nyström-
    # corrects it at the checkpoints between); the BM25 table bridges until the first index.
    "cross-batch+dynamic": [
        "training.cross_batch=true",
        "training.group_size=2",
        "training.mining.source=dynamic",
        "training.mining.refresh_every=20",
        "training.mining.landmarks=256",
    ],
    "cross-batch+dynamic+softmax": [
        "training.cross_batch=true",
        "training.group_size=2",
        "training.mining.source=dynamic",
        "training.mining.refresh_every=20",
        "training.mining.landmarks=256",
        "training.mining.sampling=softmax",
    ],
    "cross-batch+bm25+bank": [
        "training.cross_batch=true",
        "training.group_size=2",
        "training.memory_bank.size={bank}",
    ],
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", type=Path, help="training job YAML (its budget applies to all arms)")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, of: {', '.join(ARMS)}")
    p.add_argument("--baseline", default="cross-batch+bm25", help="the arm ratios refer to")
    p.add_argument("--bank-steps", type=int, default=4, help="memory bank: steps of passages")
    p.add_argument("--bank-warmup", type=int, default=4, help="memory bank: warm-up steps")
    p.add_argument(
        "--gc-factor", type=int, default=4, help="GradCache: batch = factor x the job's batch"
    )
    p.add_argument("--out", type=Path, default=Path("bench-out/losses.json"))


def main(args: argparse.Namespace) -> None:
    import ray

    from raydr import config
    from raydr.bench.common import machine, write_json
    from raydr.errors import RaydrError

    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in arms if a not in ARMS]
    if unknown or args.baseline not in arms:
        raise RaydrError(
            f"--arms {args.arms!r} / --baseline {args.baseline!r}: expected arms among "
            f"{', '.join(ARMS)}, the baseline among them"
        )
    stamp = int(time.time())
    # Check every arm's config before the first one trains for minutes.
    cfgs = {arm: config.load(args.config, _overrides(args, arm, stamp)) for arm in arms}
    rows = []
    for arm, cfg in cfgs.items():
        rows.append(run_arm(arm, cfg))
        print(rows[-1], flush=True)
    ray.shutdown()
    base = next(r for r in rows if r["arm"] == args.baseline)
    metric = next(iter(cfgs.values())).eval.primary_metric
    for r in rows:
        r[f"test_{metric}_vs_baseline"] = r["test"][metric] / base["test"][metric]
        r["train_time_vs_baseline"] = r["training_loop_s"] / base["training_loop_s"]
    payload = {
        "benchmark": "losses",
        "machine": machine(),
        "config": str(args.config),
        "overrides": args.overrides,
        "baseline": args.baseline,
        "metric": metric,
        "results": rows,
    }
    write_json(args.out, payload)
    plot(payload, args.out.with_suffix(".png"))
    for r in rows:
        print(
            f"{r['arm']:<24} test {metric} {r['test'][metric]:.4f} "
            f"(dev-selected step {r['selected_step']})  train {r['training_loop_s']:.0f} s  "
            f"peak RSS {r['peak_rss_mb']:.0f} MB  negatives/query {r['negatives_per_query']}"
        )
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


def _overrides(args: argparse.Namespace, arm: str, stamp: int) -> list[str]:
    from raydr import config
    from raydr.training import plan

    base = config.load(args.config, args.overrides).training
    group = 2 if "training.group_size=2" in ARMS[arm] else 1
    per_step = plan.world_sizes(base)[1] * base.batch_size * group
    fill = {
        "{bank}": str(args.bank_steps * per_step),
        "{gc_batch}": str(args.gc_factor * base.batch_size),
        "{gc_chunk}": str(base.batch_size),
    }
    bank = []
    for o in ARMS[arm]:
        for key, value in fill.items():
            o = o.replace(key, value)
        bank.append(o)
    if any("memory_bank" in o for o in bank):
        bank.append(f"training.memory_bank.warmup_steps={args.bank_warmup}")
    return [*args.overrides, f"name=bench-losses-{arm}-{stamp}", *bank]


def run_arm(arm: str, cfg) -> dict[str, Any]:
    """Train one arm, select its best checkpoint on the validation split, score it on test."""
    import torch

    from raydr.errors import RaydrError
    from raydr.launch import train
    from raydr.validation.report import best_row

    if not cfg.validation.enabled:
        raise RaydrError(f"{arm}: validation.enabled=false: arms are selected on validation")
    t0 = time.perf_counter()
    result, validated = train(cfg)
    wall = time.perf_counter() - t0
    metric = cfg.eval.primary_metric
    best = best_row(validated or [], metric)
    if best is None:
        raise RaydrError(f"{arm}: no checkpoint was validated; lower training.checkpoint_every")
    torch.set_num_threads(os.cpu_count() or 1)  # the driver may have inherited 1 from Ray
    test = _score_on_test(cfg, best["checkpoint"])
    m = result.metrics
    return {
        "arm": arm,
        "selected_step": best["step"],
        f"dev_{metric}": best["metrics"][metric],
        "test": test,
        "steps": m["step"],
        "training_loop_s": m["elapsed_s"],
        "wall_s_with_validation": wall,
        "peak_rss_mb": m.get("peak_rss_mb"),
        "negatives_per_query": m["negatives_per_query"],
        "negatives_source": m.get("negatives_source", "bm25"),
        "index_step": m.get("index_step"),
        "passages_encoded_by_validators": sum(
            r["metrics"].get("passages_encoded", 0) for r in validated or []
        ),
        "world_size": m["world_size"],
        "dev_curve": [(r["step"], r["metrics"][metric]) for r in validated or []],
    }


def _score_on_test(cfg, model_path: str) -> dict[str, float]:
    """The selected checkpoint on ``data.split``, full corpus: the one look at test."""
    from raydr.data.split import load_split
    from raydr.retrieval.dense import DenseRetriever, search_and_score
    from raydr.training import checkpoint

    split = load_split(cfg.data.path, cfg.data.split)
    retriever = DenseRetriever(*checkpoint.load(model_path, cfg.model), cfg)
    docs = retriever.embed(split.passages, "passages", False)
    queries = retriever.embed(split.queries, "queries", False)
    metrics, _ = search_and_score(cfg, docs, queries, split.doc_ids, split.query_ids, split.qrels)
    return metrics


def plot(payload: dict[str, Any], path: Path) -> None:
    """Test score per arm (bars), with training time and negatives per query as labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from raydr.atomic import save_figure

    rows, metric = payload["results"], payload["metric"]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    x = range(len(rows))
    bars = ax.bar(list(x), [r["test"][metric] for r in rows], color="tab:blue")
    for bar, r in zip(bars, rows, strict=True):
        ax.annotate(
            f"{r['test'][metric]:.3f}\n{r['training_loop_s']:.0f} s, "
            f"{r['negatives_per_query']} neg",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=7,
        )
    ax.set_xticks(list(x), [r["arm"] for r in rows], rotation=20, ha="right", fontsize=8)
    low = min(r["test"][metric] for r in rows)
    ax.set_ylim(max(0.0, low - 0.05), max(r["test"][metric] for r in rows) + 0.03)
    ax.set_ylabel(f"test {metric} (checkpoint selected on dev)")
    m = payload["machine"]
    ax.set_title(f"losses and negatives, same budget ({m.get('cpu')}, {m.get('cores')} cores)")
    fig.tight_layout()
    save_figure(fig, path)


VERBS = (
    Verb(
        "losses",
        "training recipes (negatives, losses) at one budget, selected on dev",
        add_arguments,
        main,
    ),
)
