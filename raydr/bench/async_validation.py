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

from raydr.bench.measure import time_training
from raydr.verb import Verb


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
        rows.append(time_training(name, cfg))
        print(rows[-1], flush=True)
    ray.shutdown()
    by = {r["variant"]: r for r in rows}
    payload = {
        "benchmark": "async-validation",
        "machine": machine(),
        "steps": args.steps,
        "validate_every": args.every,
        "results": rows,
        "ratios": ratios(by),
    }
    write_json(args.out, payload)
    plot(payload, args.out.with_suffix(".png"))
    for k, v in payload["ratios"].items():
        print(f"{k}: {v:.2f}")
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


def ratios(by: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Each variant against its baseline from the same session (same cores, same steps)."""

    def r(a: str, b: str, key: str) -> float:
        return by[a][key] / by[b][key]

    return {
        "steps_per_s inline / none (competing cores)": r("inline", "none", "steps_per_s"),
        "steps_per_s pool / none (competing cores)": r("pool", "none", "steps_per_s"),
        "steps_per_s pool / none (pinned apart)": r("pool-pinned", "none-pinned", "steps_per_s"),
        "training_loop_time inline / pool": r("inline", "pool", "training_loop_s"),
        "training_loop_time inline / pool-pinned": r("inline", "pool-pinned", "training_loop_s"),
        "train_until_validated inline / pool": r("inline", "pool", "train_until_validated_s"),
        "train_until_validated inline / pool-pinned": r(
            "inline", "pool-pinned", "train_until_validated_s"
        ),
    }


def plot(payload: dict[str, Any], path: Path) -> None:
    """Bars per variant: the training loop, and the wait until the last metric is in."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from raydr.atomic import save_figure

    rows = payload["results"]
    names = [r["variant"] for r in rows]
    x = range(len(rows))
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar([i - 0.2 for i in x], [r["training_loop_s"] for r in rows], 0.4, label="training loop")
    ax.bar(
        [i + 0.2 for i in x],
        [r["train_until_validated_s"] for r in rows],
        0.4,
        label="until the last checkpoint is validated",
    )
    ax.set_xticks(list(x), names)
    ax.set_ylabel("seconds")
    ax.set_title(
        f"{payload['steps']} steps, validation every {payload['validate_every']} "
        f"({payload['machine'].get('cpu')}, {payload['machine'].get('cores')} cores)"
    )
    ax.legend(loc="upper left", fontsize=8)
    save_figure(fig, path)


VERBS = (
    Verb("async", "training wall time: inline validation vs the actor pool", add_arguments, main),
)
