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
        rows.append(measure(name, cfg))
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


def measure(name: str, cfg) -> dict[str, Any]:
    """Train ``cfg`` (validated as it says) and time it: the training loop, steps/s, and from
    the first step until the last checkpoint's metric is in the ledger."""
    from raydr.launch import train

    t0 = time.perf_counter()
    result, validated = train(cfg)  # returns once validation is complete too
    total = time.perf_counter() - t0
    if result.error:
        raise RuntimeError(f"{name}: {result.error}")
    m = result.metrics
    # From the first step until the last checkpoint's metrics are in the ledger: what a
    # user waits for. Ray's start-up and teardown (about 15 s each run) are left out.
    loop_start = m["reported_at"] - m["elapsed_s"]
    done_at = max([m["reported_at"], *(r["time"] for r in validated or [])])
    return {
        "variant": name,
        "wall_s_until_all_validated": total,
        "train_until_validated_s": done_at - loop_start,
        "training_loop_s": m["elapsed_s"],
        "steps_per_s": m["step"] / m["elapsed_s"],
        "validations": len(validated or []),
        "mean_validation_s": (
            sum(r["metrics"]["validation_s"] for r in validated) / len(validated)
            if validated
            else None
        ),
    }


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
