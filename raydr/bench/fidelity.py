"""``raydr bench validation-fidelity``: how well cheap corpus subsets rank checkpoints.

For every checkpoint of a run (plus the base model as step 0) the full corpus is encoded once;
each (strategy, size) subset is then scored on rows of those same embeddings, so differences
come from the subset alone. Per subset it reports |Δ primary metric| and Kendall τ of the
checkpoint ranking against ``full``, and the wall time of a real validation on that subset
(a warm Validator, encode + index + score) against a real full validation.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from raydr.verb import Verb


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", type=Path, help="job YAML (model, data, validation.split)")
    p.add_argument("run", type=Path, help="folder holding the run's checkpoint_* folders")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--random-sizes", type=int, nargs="+", default=[300, 1000])
    p.add_argument("--depths", type=int, nargs="+", default=[3, 10], help="pool depths (top-k)")
    p.add_argument("--out", type=Path, default=Path("bench-out/validation_fidelity.json"))


def main(args: argparse.Namespace) -> None:
    import os

    import torch
    from scipy.stats import kendalltau

    from raydr import config
    from raydr.bench.common import machine, write_json
    from raydr.config import SamplingConfig
    from raydr.data.split import load_split
    from raydr.retrieval.dense import DenseRetriever, search_and_score
    from raydr.training import checkpoint
    from raydr.validation import sampling
    from raydr.validation.validator import Validator

    torch.set_num_threads(os.cpu_count() or 1)
    cfg = config.load(args.config, args.overrides).with_absolute_paths()
    metric = cfg.eval.primary_metric
    split = load_split(cfg.data.path, cfg.validation.split).limit_queries(
        cfg.validation.max_queries
    )
    folders = sorted(
        (p for p in args.run.iterdir() if p.is_dir() and checkpoint.is_raydr(p)),
        key=checkpoint.step_of,
    )
    models: list[tuple[int, str]] = [
        (0, cfg.model.name),
        *((checkpoint.step_of(p), str(p)) for p in folders),
    ]
    if len(models) < 3:
        raise SystemExit(f"{args.run}: need at least 2 checkpoints, found {len(folders)}")

    # Encode the full corpus once per checkpoint; full-corpus metrics are the reference.
    embeddings, full_metric = [], []
    for step, path in models:
        r = DenseRetriever(*checkpoint.load(path, cfg.model), cfg)
        d, q = r.embed(split.passages, "passages"), r.embed(split.queries, "queries")
        embeddings.append((d, q))
        m, run = search_and_score(cfg, d, q, split.doc_ids, split.query_ids, split.qrels)
        full_metric.append(m[metric])
        if step == 0:
            base_run = run
        print(f"step {step}: full {metric} {m[metric]:.4f}", flush=True)

    bm25_max = sampling.bm25_pool(split.passages, split.doc_ids, split.queries, 1, cfg.bm25)
    del bm25_max  # warm bm25s imports before timing anything
    subsets: dict[str, list[str]] = {"full": list(split.doc_ids)}
    for n in args.random_sizes:
        subsets[f"random-{n}"] = sampling.select(
            SamplingConfig(strategy="random", size=n), split.doc_ids, split.qrels
        )
    for k in args.depths:
        bm25 = sampling.bm25_pool(split.passages, split.doc_ids, split.queries, k, cfg.bm25)
        dense = sampling.run_pool(base_run, k)
        for strategy in ("bm25-pool", "dense-pool", "union"):
            subsets[f"{strategy}-{k}"] = sampling.select(
                SamplingConfig(strategy=strategy, depth=k),
                split.doc_ids,
                split.qrels,
                bm25=bm25,
                dense=dense,
            )

    row_of = {d: i for i, d in enumerate(split.doc_ids)}
    results: list[dict[str, Any]] = []
    last_path = models[-1][1]
    for name, ids in subsets.items():
        rows = np.array([row_of[d] for d in ids])
        values = []
        for d, q in embeddings:
            m, _ = search_and_score(cfg, d[rows], q, ids, split.query_ids, split.qrels)
            values.append(m[metric])
        tau = kendalltau(values, full_metric).statistic
        # A real, warm validation on this subset: what a validator actor pays per checkpoint.
        validator = Validator(
            cfg,
            None if name == "full" else ids,
            threads=os.cpu_count() or 1,
        )
        validator.warm()
        t = time.perf_counter()
        validator.validate(last_path, models[-1][0])
        seconds = time.perf_counter() - t
        results.append(
            {
                "subset": name,
                "size": len(ids),
                "validation_s": seconds,
                "kendall_tau_vs_full": float(tau),
                "mean_abs_delta_vs_full": float(np.mean(np.abs(np.array(values) - full_metric))),
                "metric_per_checkpoint": values,
            }
        )
        print(f"{name:>16} size {len(ids):5d}  {seconds:6.1f}s  tau {tau:+.3f}", flush=True)
    full_s = next(r["validation_s"] for r in results if r["subset"] == "full")
    for r in results:
        r["speedup_vs_full"] = full_s / r["validation_s"]
    payload = {
        "benchmark": "validation-fidelity",
        "machine": machine(),
        "metric": metric,
        "queries": len(split.query_ids),
        "checkpoint_steps": [s for s, _ in models],
        "full_metric_per_checkpoint": full_metric,
        "results": results,
        "goal_met": [
            r["subset"]
            for r in results
            if r["kendall_tau_vs_full"] >= 0.9 and r["speedup_vs_full"] >= 5
        ],
    }
    write_json(args.out, payload)
    plot(payload, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


def plot(payload: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from raydr.atomic import save_figure

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in payload["results"]:
        ax.scatter(r["speedup_vs_full"], r["kendall_tau_vs_full"], s=30)
        ax.annotate(
            f"{r['subset']} ({r['size']})",
            (r["speedup_vs_full"], r["kendall_tau_vs_full"]),
            fontsize=7,
            xytext=(3, 3),
            textcoords="offset points",
        )
    ax.axhline(0.9, color="gray", ls="--", lw=1)
    ax.axvline(5, color="gray", ls="--", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("validation speed-up vs full corpus (measured)")
    ax.set_ylabel(f"Kendall τ of checkpoint ranking by {payload['metric']} vs full")
    ax.set_title(f"Validation fidelity, {len(payload['checkpoint_steps'])} checkpoints")
    save_figure(fig, path)


VERBS = (
    Verb(
        "validation-fidelity",
        "subset strategies: Kendall tau and speed vs full",
        add_arguments,
        main,
    ),
)
