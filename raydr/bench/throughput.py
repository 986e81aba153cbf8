"""``raydr bench encode``: encoding throughput, padding waste, and FLOP/s against matmul peak.

For each (precision, max length, bucketing) it encodes the same seeded sample of passages and
reports passages/s, real (non-padding) tokens/s, and the model FLOP/s spent on real tokens as a
fraction of a same-run, same-dtype matmul: the machine's practical peak. Padding therefore
counts against the score.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from raydr.bench.measure import MODES, encoding
from raydr.verb import Verb


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, default=Path("data/scifact"), help="imported dataset")
    p.add_argument("--model", default="all-MiniLM-L6-v2")
    p.add_argument("--n", type=int, default=256, help="passages per measurement")
    p.add_argument("--max-lengths", type=int, nargs="+", default=[256, 512])
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    p.add_argument("--out", type=Path, default=Path("bench-out/encode.json"))
    p.add_argument("--seed", type=int, default=0)


def plot(payload: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from raydr.atomic import save_figure

    rows = payload["results"]
    labels = sorted({(r["max_length"], r["bucketing"]) for r in rows})
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(modes)
    for j, mode in enumerate(modes):
        vals = [
            next(
                (
                    r["fraction_of_matmul_peak"]
                    for r in rows
                    if r["mode"] == mode and (r["max_length"], r["bucketing"]) == lab
                ),
                0,
            )
            for lab in labels
        ]
        ax.bar(np.arange(len(labels)) + j * width, vals, width, label=mode)
    ax.axhline(0.8, color="gray", linestyle="--", linewidth=1, label="goal 0.8")
    ax.set_xticks(np.arange(len(labels)) + width * (len(modes) - 1) / 2)
    ax.set_xticklabels([f"len {m}\n{'bucketed' if b else 'unsorted'}" for m, b in labels])
    ax.set_ylabel("real-token FLOP/s ÷ same-dtype matmul peak")
    ax.set_title(f"Encoding efficiency, {payload['model']} on {payload['machine']['cpu'][:40]}")
    ax.legend()
    save_figure(fig, path)


def main(args: argparse.Namespace) -> None:
    from raydr.bench.common import write_json

    payload = encoding(
        data=args.data,
        model=args.model,
        n=args.n,
        max_lengths=args.max_lengths,
        modes=args.modes,
        batch_size=args.batch_size,
        threads=args.threads,
        seed=args.seed,
    )
    write_json(args.out, payload)
    plot(payload, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


VERBS = (Verb("encode", "encoding throughput and FLOP/s vs matmul peak", add_arguments, main),)
