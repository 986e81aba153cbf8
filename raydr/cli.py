"""``raydr <verb> …``: the command line. Bad input ends in one line on stderr and exit status 2."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from raydr.errors import RaydrError


def _cmd_import_beir(args: argparse.Namespace) -> None:
    from raydr.data.beir import import_beir

    report = import_beir(args.src, args.out, overwrite=args.overwrite, strict=args.strict)
    print(json.dumps(report, indent=2))


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from raydr import config
    from raydr.evaluate import evaluate, format_table

    cfg = config.load(args.config, args.overrides)
    result = evaluate(cfg, model_path=args.model, progress=not args.quiet)
    print(format_table(result))
    print(
        f"[{result.info['split']}: {result.info['num_queries']} queries, "
        f"{result.info['num_docs']} docs, {result.timings['total']:.1f}s] → {cfg.run_dir}"
    )


def _cmd_bm25(args: argparse.Namespace) -> None:
    from raydr import config
    from raydr.evaluate import EvalResult, format_table, load_split, write_outputs
    from raydr.retrieval.bm25 import bm25_run
    from raydr.validation.metrics import drop_identical_ids, score

    cfg = config.load(args.config, args.overrides)
    t0 = time.perf_counter()
    split = load_split(cfg.data.path, cfg.data.split)
    run = bm25_run(
        split.passages,
        split.doc_ids,
        split.queries,
        split.query_ids,
        cfg.bm25,
        cfg.eval.depth,
        progress=not args.quiet,
    )
    if cfg.eval.ignore_identical_ids:
        run = drop_identical_ids(run)
    result = EvalResult(
        metrics=score(split.qrels, run, cfg.eval.metrics),
        primary_metric=cfg.eval.primary_metric,
        timings={"total": time.perf_counter() - t0},
        info={
            "model": "bm25",
            "bm25": cfg.bm25.model_dump(),
            "data": str(cfg.data.path),
            "split": cfg.data.split,
            "num_queries": len(split.query_ids),
            "num_docs": len(split.doc_ids),
        },
    )
    out_dir = cfg.run_dir / "bm25"
    write_outputs(out_dir, result, run, tag="bm25")
    print(format_table(result))
    print(
        f"[{cfg.data.split}: {len(split.query_ids)} queries, {result.timings['total']:.1f}s] → {out_dir}"
    )


def _cmd_train(args: argparse.Namespace) -> None:
    from raydr import config
    from raydr.training.trainer import train

    cfg = config.load(args.config, args.overrides)
    result = train(cfg)
    if result.error:
        raise RaydrError(f"training failed: {result.error}")
    print(json.dumps(result.metrics, indent=2, default=str))
    if result.checkpoint is not None:
        print(f"final checkpoint: {result.checkpoint.path}")


def _cmd_mine(args: argparse.Namespace) -> None:
    from raydr import config
    from raydr.mining.bm25 import mine_bm25_negatives

    cfg = config.load(args.config, args.overrides)
    if cfg.training.negatives is None:
        raise RaydrError(f"{args.config}: training.negatives: set the output path to write")
    counts = mine_bm25_negatives(
        cfg.data.path, cfg.training.split, cfg.training.negatives, args.depth, cfg.bm25
    )
    print(json.dumps({"out": str(cfg.training.negatives), **counts}))


def _cmd_bench_encode(args: argparse.Namespace) -> None:
    from raydr.bench.encode import main as bench_main

    bench_main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raydr", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = verbs.add_parser("import-beir", help="BEIR jsonl/tsv folder → Parquet tables")
    p.add_argument(
        "src", type=Path, help="BEIR folder (corpus.jsonl[.gz], queries.jsonl[.gz], qrels/)"
    )
    p.add_argument("out", type=Path, help="output folder (written atomically)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--strict", action="store_true", help="qrels with unknown ids are errors")
    p.set_defaults(func=_cmd_import_beir)

    for name, func, text in [
        ("evaluate", _cmd_evaluate, "dense retrieval quality of a model or checkpoint"),
        ("bm25", _cmd_bm25, "BM25 baseline run and metrics (bm25s)"),
        ("train", _cmd_train, "Ray Train dual-encoder training (cross-batch negatives)"),
        (
            "mine-negatives",
            _cmd_mine,
            "BM25 hard negatives for training.split → training.negatives",
        ),
    ]:
        p = verbs.add_parser(name, help=text)
        p.add_argument("config", type=Path, help="job YAML (see jobs/)")
        p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
        if name == "evaluate":
            p.add_argument("--model", help="model folder to score instead of model.name")
        if name == "mine-negatives":
            p.add_argument("--depth", type=int, default=30, help="negatives kept per query")
        p.set_defaults(func=func)

    bench = verbs.add_parser("bench", help="benchmarks that write JSON (+ PNG)")
    benches = bench.add_subparsers(dest="bench", required=True, metavar="BENCH")
    from raydr.bench.encode import add_arguments as encode_args

    p = benches.add_parser("encode", help="encoding throughput and FLOP/s vs matmul peak")
    encode_args(p)
    p.set_defaults(func=_cmd_bench_encode)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # argparse cannot take positional overrides after an option (`CONFIG -q k=v`), so collect
    # leftover key=value words by hand; anything else is still an error.
    args, extra = parser.parse_known_args(argv)
    stray = [w for w in extra if w.startswith("-") or "=" not in w]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("bm25s", "faiss", "httpx"):  # libraries that log at DEBUG on import
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        args.func(args)
    except RaydrError as err:
        print(f"raydr: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("raydr: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
