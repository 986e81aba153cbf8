"""``raydr bench gpu``: the GPU paths in one short run (a few minutes on one GPU).

1. Encoding: bf16 passages/s and the model's FLOP/s on real tokens as a fraction of a same-run
   bf16 matmul (the device's practical peak), and bf16 against fp32.
2. Training beside validation on one device: a 1-worker run holding ``--worker-gpu`` of the GPU
   while two validators hold ``--validator-gpu`` each of the same GPU, measured three ways:
   alone (no validation), inline (rank 0 validates, training waits) and the pool.
3. For each, the time from the first step until the last checkpoint's metric is in.

Without CUDA it runs in CPU mode: the same code paths, with Ray given one logical GPU so the
fractional reservations are still made (training's GPU share is dropped, as ``use_gpu`` is);
the JSON then says that no GPU was lent, and its figures are CPU figures. CI runs it this way
on the tiny model, so it works whenever a GPU machine is at hand.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from raydr.verb import Verb

NO_GPU = "no GPU was lent: CPU mode (the same code paths; the figures are CPU figures)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", type=Path, help="training job YAML (model, data, validation)")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--every", type=int, default=10, help="checkpoint/validate every N steps")
    p.add_argument("--passages", type=int, default=2048, help="passages for the encode part")
    p.add_argument("--worker-gpu", type=float, default=0.5, help="the training worker's share")
    p.add_argument("--validator-gpu", type=float, default=0.25, help="each validator's share")
    p.add_argument("--out", type=Path, default=Path("bench-out/gpu.json"))


def variants(args: argparse.Namespace, cuda: bool) -> dict[str, list[str]]:
    """name → overrides: one worker on a share of the GPU; validators on shares of the same."""
    worker = f"{{CPU: 1, GPU: {args.worker_gpu}}}" if cuda else "{CPU: 1}"
    shared = [
        "training.num_workers=1",
        f"training.resources_per_worker={worker}",
        f"training.max_steps={args.steps}",
        f"training.checkpoint_every={args.every}",
        f"validation.num_gpus={args.validator_gpu}",
        # On a GPU node each validator gets a core of its own; a CPU box shares its cores.
        f"validation.num_cpus={1 if cuda else 0}",
    ]
    if not cuda:
        shared.append("ray.num_gpus=1")  # a logical GPU: the reservations are still checked
    return {
        "alone": [*shared, "validation.enabled=false"],
        "inline": [*shared, "validation.mode=inline"],
        "pool": [*shared, "validation.mode=pool", "validation.num_actors=2"],
    }


def main(args: argparse.Namespace) -> None:
    import ray
    import torch

    from raydr import config
    from raydr.bench.common import machine, write_json
    from raydr.bench.measure import encoding, time_training

    cuda = torch.cuda.is_available()
    base = config.load(args.config, list(args.overrides))
    t0 = time.perf_counter()
    enc = encoding(
        data=base.data.path,
        model=base.model.name,
        n=args.passages,
        max_lengths=[base.model.passage_max_length],
        modes=["fp32", "bf16"],
        batch_size=base.validation.batch_size,
        seed=base.seed,
    )
    encode_s = time.perf_counter() - t0
    rows: list[dict[str, Any]] = []
    stamp = int(time.time())
    for name, extra in variants(args, cuda).items():
        cfg = config.load(args.config, [*args.overrides, f"name=bench-gpu-{name}-{stamp}", *extra])
        rows.append({**time_training(name, cfg), "overrides": extra})
        print(rows[-1], flush=True)
        ray.shutdown()  # each variant on a fresh Ray of the configured shape
    payload = {
        "benchmark": "gpu",
        "gpu_lent": cuda,
        "note": None if cuda else NO_GPU,
        "machine": machine(),
        "config": str(args.config),
        "encode": _encode_figures(enc, base.model.passage_max_length),
        "encode_s": encode_s,
        "training": rows,
        "ratios": _ratios({r["variant"]: r for r in rows}),
        "time_to_last_metric_s": {r["variant"]: r["train_until_validated_s"] for r in rows},
    }
    write_json(args.out, payload)
    for key, value in {**payload["encode"], **payload["ratios"]}.items():
        print(f"{key}: {value:.3g}" if isinstance(value, float) else f"{key}: {value}")
    if not cuda:
        print(NO_GPU)
    print(f"wrote {args.out}")


def _encode_figures(enc: dict[str, Any], max_len: int) -> dict[str, Any]:
    """The bucketed (as validators encode) bf16 and fp32 rows at the job's passage length."""
    by = {r["mode"]: r for r in enc["results"] if r["bucketing"] and r["max_length"] == max_len}
    bf16, fp32 = by["bf16"], by["fp32"]
    return {
        "device": enc["device"],
        "max_length": max_len,
        "bf16_passages_per_s": bf16["passages_per_s"],
        "bf16_fraction_of_bf16_matmul": bf16["fraction_of_matmul_peak"],
        "bf16_matmul_flops_per_s": enc["matmul_peak_flops_per_s"]["bf16"],
        "fp32_passages_per_s": fp32["passages_per_s"],
        "bf16_speedup_vs_fp32": bf16["passages_per_s"] / fp32["passages_per_s"],
        "bf16_min_cosine_vs_fp32": bf16["min_cosine_vs_fp32"],
    }


def _ratios(by: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Training speed beside validation, against the same run alone (same session)."""
    alone = by["alone"]["steps_per_s"]
    return {
        "steps_per_s inline / alone": by["inline"]["steps_per_s"] / alone,
        "steps_per_s pool / alone": by["pool"]["steps_per_s"] / alone,
        "time_to_last_metric inline / pool": by["inline"]["train_until_validated_s"]
        / by["pool"]["train_until_validated_s"],
    }


VERBS = (
    Verb(
        "gpu",
        "bf16 encode vs matmul; training beside fractional-GPU validators",
        add_arguments,
        main,
    ),
)
