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


def compare(args: argparse.Namespace) -> None:
    """Per-query paired tests of run files against a baseline run, on the job's qrels."""
    from raydr import atomic, config
    from raydr.data.tables import load_qrels
    from raydr.retrieval.metrics import drop_identical_ids, per_query, read_trec_run
    from raydr.retrieval.significance import paired

    cfg = config.load(args.config, args.overrides)
    metric = args.metric or cfg.eval.primary_metric
    qrels = load_qrels(cfg.data.path, cfg.data.split)

    def values(path: Path) -> dict[str, float]:
        run = read_trec_run(path)
        if cfg.eval.ignore_identical_ids:
            run = drop_identical_ids(run)
        return per_query(qrels, run, [metric])[metric]

    base = values(args.baseline)
    rows = [{"run": str(path), **paired(base, values(path))} for path in args.run]
    width = max(len(r["run"]) for r in rows)
    print(
        f"{metric} on {cfg.data.path} {cfg.data.split} ({len(base)} queries), "
        f"against {args.baseline}: {rows[0]['baseline']:.4f}"
    )
    for r in rows:
        print(
            f"{r['run']:<{width}}  {r['mean']:.4f}  {r['diff']:+.4f}  "
            f"{r['wins']}/{r['ties']}/{r['losses']}  t-test p={r['t_test_p']:.3g}  "
            f"Wilcoxon p={r['wilcoxon_p']:.3g}"
        )
    if args.out:
        payload = {
            "metric": metric,
            "data": str(cfg.data.path),
            "split": cfg.data.split,
            "baseline": str(args.baseline),
            "runs": rows,
        }
        atomic.write_json(args.out, payload)
        print(f"→ {args.out}")


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
    if args.mix is not None or args.soup is not None:
        _blend(args, ledger, best)
    elif args.export:
        print(f"exported to {export(best, args.export)}")


def _blend(args: argparse.Namespace, ledger, best: dict) -> None:
    """``--mix`` / ``--soup``: a weight-space ensemble of the run, chosen on its dev set."""
    from raydr import blend
    from raydr.validation.sampling import subset_beside

    if args.export is None:
        raise RaydrError("--mix and --soup write a model: give --export DIR")
    if args.mix is not None and args.soup is not None:
        raise RaydrError("--mix and --soup: choose one")
    rows = ledger.results(args.trial)
    kept = blend.kept_checkpoints(rows, args.metric)
    if not kept:
        raise RaydrError(f"{ledger.path}: no validated checkpoint is still on disk to blend")
    chooses = args.mix == "auto" or args.soup == "greedy"
    scorer = blend.DevScorer(kept[0], args.metric, subset_beside(ledger.path))
    try:
        if args.mix is not None:
            record = blend.mix(
                best["checkpoint"], args.mix, args.export, scorer if chooses else None
            )
        else:
            record = blend.soup(kept, args.export, args.soup, scorer if chooses else None)
    finally:
        scorer.close()
    print(blend.describe(record))
    print(f"exported to {args.export}")


def _mix(text: str) -> float | str:
    """``--mix``: auto, or α in [0, 1]."""
    if text == "auto":
        return text
    try:
        alpha = float(text)
    except ValueError:
        alpha = float("nan")
    if not 0.0 <= alpha <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1] or auto, got {text!r}")
    return alpha


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
    p.add_argument(
        "--mix",
        type=_mix,
        metavar="ALPHA|auto",
        help="export (1-ALPHA)*base + ALPHA*best (WiSE-FT); auto: ALPHA chosen on dev",
    )
    p.add_argument(
        "--soup",
        choices=["uniform", "greedy"],
        help="export the average of the kept checkpoints (greedy: each kept if dev does not drop)",
    )


def _compare_arguments(p: argparse.ArgumentParser) -> None:
    job_arguments(p)
    p.add_argument("--baseline", type=Path, required=True, help="the TREC run compared against")
    p.add_argument(
        "--run", type=Path, action="append", required=True, help="a TREC run (repeat for more)"
    )
    p.add_argument("--metric", help="default: eval.primary_metric")
    p.add_argument("--out", type=Path, help="write the comparison as JSON")


VERBS = (
    Verb(
        "evaluate",
        "dense retrieval quality of a model or checkpoint",
        _evaluate_arguments,
        evaluate,
    ),
    Verb("bm25", "BM25 baseline run and metrics (bm25s)", job_arguments, bm25),
    Verb("best", "the best checkpoint of a run by validation metric", _best_arguments, best),
    Verb(
        "compare",
        "paired significance (t-test, Wilcoxon) of runs against a baseline run",
        _compare_arguments,
        compare,
    ),
)
