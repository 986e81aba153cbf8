"""``raydr bench train-step``: step time with cross-batch gather against in-batch negatives only.

Both variants run the real Ray Train loop on the same data, workers and seeds; throughput is
the steady-state window after the first report, so start-up and warm-up are excluded.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from raydr.verb import Verb


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", type=Path, help="training job YAML (e.g. jobs/scifact-train.yaml)")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--steps", type=int, default=8, help="steps per variant (even)")
    p.add_argument("--out", type=Path, default=Path("bench-out/train_step.json"))


def main(args: argparse.Namespace) -> None:
    import ray

    from raydr import config
    from raydr.bench.common import machine, write_json
    from raydr.launch import train

    base = config.load(args.config, args.overrides)
    half = max(1, args.steps // 2)
    rows: list[dict[str, Any]] = []
    for cross in (False, True):
        cfg = config.load(
            args.config,
            [
                *args.overrides,
                f"name=bench-train-step-{'cross' if cross else 'inbatch'}",
                f"training.cross_batch={str(cross).lower()}",
                f"training.max_steps={2 * half}",
                f"training.checkpoint_every={half}",
                f"training.storage_path={base.paths.run_dir / 'bench-ray'}",
                "validation.enabled=false",
            ],
        )
        result, _ = train(cfg)
        if result.error:
            raise RuntimeError(f"benchmark run failed: {result.error}")
        m = result.metrics
        rows.append(
            {
                "cross_batch": cross,
                "pairs_per_s": m["pairs_per_s"],
                "seconds_per_step": cfg.training.batch_size * _world(cfg) / m["pairs_per_s"],
                "negatives_per_query": m["negatives_per_query"],
                "steps_timed": half,
            }
        )
        print(rows[-1], flush=True)
    ray.shutdown()
    inbatch, cross = rows
    payload = {
        "benchmark": "train-step",
        "machine": machine(),
        "config": str(args.config),
        "workers": _world(base),
        "batch_size_per_worker": base.training.batch_size,
        "group_size": base.training.group_size,
        "results": rows,
        "step_time_ratio_cross_over_inbatch": cross["seconds_per_step"]
        / inbatch["seconds_per_step"],
        "negatives_ratio": cross["negatives_per_query"] / inbatch["negatives_per_query"],
    }
    write_json(args.out, payload)
    print(
        f"step time cross/in-batch = {payload['step_time_ratio_cross_over_inbatch']:.3f}; wrote {args.out}"
    )


def _world(cfg) -> int:
    n = cfg.training.num_workers
    return n[0] if isinstance(n, tuple) else n


VERBS = (Verb("train-step", "step time: cross-batch gather vs in-batch only", add_arguments, main),)
