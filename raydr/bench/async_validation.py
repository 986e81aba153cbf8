"""``raydr bench async``: does asynchronous validation keep training from waiting?

Runs the same short training (one worker) five ways in one session and compares wall times:
no validation; inline validation (rank 0 validates every checkpoint and training waits);
the actor pool competing for the same cores; and pool and baseline pinned apart (training on
core 0, the validator on core 1), which is what separate GPUs or fractions give on a cluster.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", type=Path, help="training job YAML")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--every", type=int, default=4, help="checkpoint/validate every N steps")
    p.add_argument("--out", type=Path, default=Path("bench-out/async_validation.json"))


# Unpinned: training takes both cores (2 threads) and the validator competes for them.
# Pinned: training on core 0, the validator on core 1, as separate GPUs would be.
_SHARED = ["training.resources_per_worker={CPU: 2}", "validation.num_cpus=0"]
_APART = ["training.resources_per_worker={CPU: 1}", "training.cpus=[0]", "validation.num_cpus=1"]
VARIANTS = {  # name → overrides
    "none": ["validation.enabled=false", *_SHARED],
    "inline": ["validation.mode=inline", *_SHARED],
    "pool": ["validation.mode=pool", *_SHARED],
    "none-pinned": ["validation.enabled=false", *_APART],
    "pool-pinned": ["validation.mode=pool", *_APART, "validation.cpus=[1]"],
}


def main(args: argparse.Namespace) -> None:
    import ray

    from raydr import config
    from raydr.bench.common import machine, write_json
    from raydr.training.trainer import train

    rows: list[dict[str, Any]] = []
    stamp = int(time.time())
    for name, extra in VARIANTS.items():
        cfg = config.load(
            args.config,
            [
                *args.overrides,
                f"name=bench-async-{name}-{stamp}",
                "training.num_workers=1",
                f"training.max_steps={args.steps}",
                f"training.checkpoint_every={args.every}",
                "validation.num_actors=1",
                "validation.num_gpus=0",
                *extra,
            ],
        )
        t0 = time.perf_counter()
        result, validated = train(cfg)  # returns once validation is complete too
        total = time.perf_counter() - t0
        if result.error:
            raise RuntimeError(f"{name}: {result.error}")
        m = result.metrics
        rows.append(
            {
                "variant": name,
                "wall_s_until_all_validated": total,
                "training_loop_s": m["elapsed_s"],
                "steps_per_s": m["step"] / m["elapsed_s"],
                "validations": len(validated or []),
                "mean_validation_s": (
                    sum(r["metrics"]["validation_s"] for r in validated) / len(validated)
                    if validated
                    else None
                ),
            }
        )
        print(rows[-1], flush=True)
    ray.shutdown()
    by = {r["variant"]: r for r in rows}
    payload = {
        "benchmark": "async-validation",
        "machine": machine(),
        "steps": args.steps,
        "validate_every": args.every,
        "results": rows,
        "ratios": {
            "training_loop_time inline / pool": by["inline"]["training_loop_s"]
            / by["pool"]["training_loop_s"],
            "steps_per_s pool / none (competing cores)": by["pool"]["steps_per_s"]
            / by["none"]["steps_per_s"],
            "steps_per_s pool / none (pinned apart)": by["pool-pinned"]["steps_per_s"]
            / by["none-pinned"]["steps_per_s"],
            "wall_until_validated inline / pool": by["inline"]["wall_s_until_all_validated"]
            / by["pool"]["wall_s_until_all_validated"],
            "wall_until_validated inline / pool-pinned": by["inline"]["wall_s_until_all_validated"]
            / by["pool-pinned"]["wall_s_until_all_validated"],
        },
    }
    write_json(args.out, payload)
    for k, v in payload["ratios"].items():
        print(f"{k}: {v:.2f}")
    print(f"wrote {args.out}")
