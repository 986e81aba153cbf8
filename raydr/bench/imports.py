"""``raydr bench import-training``: importing a training file, memory and time against size.

For each size it writes a seeded synthetic Tevatron file (``raydr.testing.synthetic``: one
positive and 3 negatives per record, each doc recurring about 4 times), and the same data as a
BEIR folder. Then, each in a fresh process, it measures seconds and peak RSS of:

- ``raydr import-training`` (records streamed through a scratch SQLite);
- ``raydr import-beir`` of the same data, the baseline, which reads each table whole.

The headline is each one's peak RSS growth from the smallest size to the largest; flat means
near 1. The work folder is deleted at the end.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path
from typing import Any

from raydr.bench.common import in_fresh_process, peak_mb
from raydr.verb import Verb


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--records", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--work", type=Path, default=Path("bench-out/import-work"))
    p.add_argument("--out", type=Path, default=Path("bench-out/import-training.json"))
    p.add_argument("--keep-work", action="store_true", help="keep the generated files")
    p.add_argument("--seed", type=int, default=0)


def _probe_training(src: str, out: str) -> dict[str, Any]:
    from raydr.data.training_import import import_training

    t0 = time.perf_counter()
    report = import_training(src, out, overwrite=True)
    return {"s": time.perf_counter() - t0, "peak_rss_mb": peak_mb(), "docs": report["docs"]}


def _probe_beir(src: str, out: str) -> dict[str, Any]:
    from raydr.data.beir import import_beir

    t0 = time.perf_counter()
    report = import_beir(src, out, overwrite=True)
    return {"s": time.perf_counter() - t0, "peak_rss_mb": peak_mb(), "docs": report["docs"]}


def _one_size(n: int, args: argparse.Namespace) -> dict[str, Any]:
    from raydr.testing.synthetic import synthetic_training_file

    work = args.work / str(n)
    work.mkdir(parents=True, exist_ok=True)
    src, beir = synthetic_training_file(work / "train.jsonl", n, seed=args.seed)
    row = {
        "records": n,
        "file_mb": src.stat().st_size / 2**20,
        "import_training": in_fresh_process(_probe_training, str(src), str(work / "imported")),
        "import_beir": in_fresh_process(_probe_beir, str(beir), str(work / "imported-beir")),
    }
    assert row["import_training"]["docs"] == row["import_beir"]["docs"] == n
    shutil.rmtree(work, ignore_errors=True)  # the largest size's files go before the next
    print(
        f"{n:>9} records ({row['file_mb']:.0f} MB): import-training "
        f"{row['import_training']['s']:.1f} s, {row['import_training']['peak_rss_mb']:.0f} MB; "
        f"import-beir {row['import_beir']['s']:.1f} s, {row['import_beir']['peak_rss_mb']:.0f} MB",
        flush=True,
    )
    return row


def run(args: argparse.Namespace) -> int:
    from raydr.bench.common import machine, publish

    sizes = sorted(set(args.records))
    args.work.mkdir(parents=True, exist_ok=True)
    try:
        rows = [_one_size(n, args) for n in sizes]
    finally:
        if not args.keep_work:
            shutil.rmtree(args.work, ignore_errors=True)
    growth = {
        key: rows[-1][key]["peak_rss_mb"] / rows[0][key]["peak_rss_mb"]
        for key in ("import_training", "import_beir")
    }
    payload = {
        "machine": machine(),
        "records": rows,
        "peak_rss_growth_smallest_to_largest": growth,
        "notes": "synthetic Tevatron records: 1 positive + 3 negatives of 40 words each",
    }
    x = sizes[-1] // sizes[0]
    figures = {
        f"import-training peak RSS x{x} records": growth["import_training"],
        f"import-beir (baseline) peak RSS x{x} records": growth["import_beir"],
        f"import-training s per 10^6 records at {sizes[-1]}": rows[-1]["import_training"]["s"]
        * 1e6
        / sizes[-1],
    }
    publish(payload, args.out, figures, plot)
    return 0


def plot(payload: dict[str, Any], path: Path) -> None:
    from raydr.bench.common import save_figure, subplots

    rows = payload["records"]
    n = [r["records"] for r in rows]
    fig, axes = subplots(1, 2, figsize=(10, 4))
    for ax, field, title in ((axes[0], "peak_rss_mb", "peak RSS (MB)"), (axes[1], "s", "seconds")):
        for key in ("import_training", "import_beir"):
            ax.plot(n, [r[key][field] for r in rows], marker="o", label=key.replace("_", "-"))
        ax.set_xscale("log")
        ax.set_xlabel("training records")
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.suptitle(f"raydr bench import-training on {payload['machine']['cpu']}")
    fig.tight_layout()
    save_figure(fig, path)


VERBS = (
    Verb(
        "import-training",
        "import-training's memory and time against the number of records (synthetic)",
        add_arguments,
        run,
    ),
)
