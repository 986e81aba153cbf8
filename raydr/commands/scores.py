"""``raydr evaluate``, ``bm25``, ``best``: scoring a model, the BM25 baseline, a run's best
checkpoint."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from raydr.commands import job_arguments
from raydr.errors import RaydrError
from raydr.verb import Verb


def evaluate(args: argparse.Namespace) -> None:
    from raydr import config
    from raydr.evaluate import evaluate, format_table
    from raydr.validation.sampling import read_subset

    cfg = config.load(args.config, args.overrides)
    subset = read_subset(args.subset) if args.subset is not None else None
    result = evaluate(cfg, model_path=args.model, progress=not args.quiet, subset=subset)
    print(format_table(result))
    print(
        f"[{result.info['split']}: {result.info['num_queries']} queries, "
        f"{result.info['num_docs']} docs, {result.timings['total']:.1f}s] → {cfg.paths.run_dir}"
    )


def bm25(args: argparse.Namespace) -> None:
    from raydr import config
    from raydr.evaluate import evaluate_bm25, format_table

    cfg = config.load(args.config, args.overrides)
    result = evaluate_bm25(cfg, progress=not args.quiet)
    print(format_table(result))
    print(
        f"[{cfg.data.split}: {result.info['num_queries']} queries, "
        f"{result.timings['total']:.1f}s] → {cfg.paths.run_dir / 'bm25'}"
    )


def best(args: argparse.Namespace) -> None:
    from raydr.validation.ledger import Ledger
    from raydr.validation.report import best_row, export

    ledger = Ledger.find(args.run)
    best = best_row(ledger.results(args.trial), args.metric)
    if best is None:
        raise RaydrError(f"{ledger.path}: no validated checkpoint has metric {args.metric!r}")
    print(
        json.dumps(
            {
                "trial": best["trial"],
                "step": best["step"],
                "checkpoint": best["checkpoint"],
                args.metric: best["metrics"][args.metric],
            },
            indent=2,
        )
    )
    if args.export:
        print(f"exported to {export(best, args.export)}")


def _evaluate_arguments(p: argparse.ArgumentParser) -> None:
    job_arguments(p)
    p.add_argument("--model", help="model folder to score instead of model.name")
    p.add_argument(
        "--subset",
        type=Path,
        help="a run's saved validation subset: score on the validators' queries and docs",
    )


def _best_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, help="run folder (runs/NAME) or its validation ledger file")
    p.add_argument("--metric", default="nDCG@10")
    p.add_argument("--trial", help="only this trial")
    p.add_argument("--export", type=Path, help="copy the model there (HF + sentence-transformers)")


VERBS = (
    Verb(
        "evaluate",
        "dense retrieval quality of a model or checkpoint",
        _evaluate_arguments,
        evaluate,
    ),
    Verb("bm25", "BM25 baseline run and metrics (bm25s)", job_arguments, bm25),
    Verb("best", "the best checkpoint of a run by validation metric", _best_arguments, best),
)
