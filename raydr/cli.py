"""``raydr <verb> …``: the command line. Bad input ends in one line on stderr and exit status 2."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from raydr.errors import RaydrError


def _cmd_import_beir(args: argparse.Namespace) -> None:
    from raydr.data.beir import import_beir
    from raydr.data.fetch import KNOWN, fetch_beir

    if args.dev_queries < 1:
        raise RaydrError(f"--dev-queries {args.dev_queries}: expected a positive count")
    src = Path(args.src)
    if not src.exists() and (args.src in KNOWN or args.md5):
        # A BEIR dataset name, not a folder: download it (cached, md5 checked) first.
        src = fetch_beir(args.src, md5=args.md5, progress=not args.quiet)
    elif not src.exists() and "/" not in args.src:
        raise RaydrError(
            f"{args.src}: no such folder, and not a BEIR dataset name raydr knows "
            f"({', '.join(sorted(KNOWN))}); for another BEIR name pass --md5 of its zip"
        )
    report = import_beir(
        src,
        args.out,
        overwrite=args.overwrite,
        strict=args.strict,
        dev_from=args.dev_from,
        dev_queries=args.dev_queries,
        dev_seed=args.dev_seed,
    )
    print(json.dumps(report, indent=2))


def _cmd_build_debian(args: argparse.Namespace) -> None:
    from raydr.data.debian import build_debian_collection, default_sources

    report = build_debian_collection(
        args.source or default_sources(),
        args.out,
        num_queries=args.queries,
        num_docs=args.docs,
        seed=args.seed,
        min_words=args.min_words,
        overwrite=args.overwrite,
    )
    print(json.dumps(report, indent=2))


def _cmd_evaluate(args: argparse.Namespace) -> None:
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


def _cmd_bm25(args: argparse.Namespace) -> None:
    from raydr import config
    from raydr.evaluate import evaluate_bm25, format_table

    cfg = config.load(args.config, args.overrides)
    result = evaluate_bm25(cfg, progress=not args.quiet)
    print(format_table(result))
    print(
        f"[{cfg.data.split}: {result.info['num_queries']} queries, "
        f"{result.timings['total']:.1f}s] → {cfg.paths.run_dir / 'bm25'}"
    )


def _cmd_train(args: argparse.Namespace) -> None:
    from raydr import config
    from raydr.launch import train

    cfg = config.load(args.config, args.overrides)
    result, validated = train(cfg)
    if result.error:
        raise RaydrError(f"training failed: {result.error}")
    print(json.dumps(result.metrics, indent=2, default=str))
    metric = cfg.eval.primary_metric
    chosen, label = (result.checkpoint.path if result.checkpoint else None), "final checkpoint"
    if validated is not None:
        from raydr.validation.ledger import Ledger
        from raydr.validation.report import best_row, plot_curves

        print(f"validation curve: {plot_curves(Ledger.for_run(cfg), metric)}")
        best = best_row(validated, metric)
        if best is not None:
            # Select on the validation split (dev), report on data.split (test), touched once.
            chosen = best["checkpoint"]
            label = f"checkpoint selected on {cfg.validation.split} (step {best['step']})"
            print(
                f"best checkpoint by {metric} on {cfg.validation.split} (validation subset): step "
                f"{best['step']} = {best['metrics'][metric]:.4f} → {chosen}"
            )
    if chosen is None or args.no_eval:
        return
    import torch

    from raydr.evaluate import evaluate, format_table

    torch.set_num_threads(os.cpu_count() or 1)  # the driver may have inherited 1 from Ray
    scored = evaluate(cfg, model_path=chosen, progress=not args.quiet)
    print(format_table(scored))
    print(f"[{label} on {cfg.data.split}, full corpus] → {cfg.paths.run_dir / 'metrics.json'}")


def _cmd_validate(args: argparse.Namespace) -> None:
    import ray

    from raydr import config
    from raydr.connect import init_ray
    from raydr.training import checkpoint
    from raydr.validation.ledger import Ledger
    from raydr.validation.pool import start_pool, wait_idle
    from raydr.validation.report import plot_curves
    from raydr.validation.watch import Watcher

    cfg = config.load(args.config, args.overrides)
    if not args.checkpoints and args.watch is None:
        raise RaydrError("validate: give checkpoint folders, or --watch DIR")
    for path in args.checkpoints:
        if not Path(path).is_dir():
            raise RaydrError(f"{path}: checkpoint folder not found")
    if args.watch is not None and not args.watch.is_dir():
        raise RaydrError(f"--watch {args.watch}: not a directory")
    init_ray(cfg)
    pool = start_pool(cfg.with_absolute_paths())
    trial = args.trial or cfg.name
    for path in args.checkpoints:
        ray.get(pool.submit.remote(trial, checkpoint.step_of(path), str(Path(path).resolve())))
    if args.watch is not None:
        watcher = Watcher(args.watch, settle_s=args.settle)
        deadline = time.time() + args.timeout if args.timeout else None
        print(f"watching {args.watch} (Ctrl-C to stop)", flush=True)
        try:
            while deadline is None or time.time() < deadline:
                for folder in watcher.poll():
                    step = checkpoint.step_of(folder)
                    if ray.get(pool.submit.remote(trial, step, str(folder.resolve()))):
                        print(f"queued {folder} (step {step})", flush=True)
                time.sleep(args.poll)
        except KeyboardInterrupt:
            pass
    wait_idle(pool)
    rows = ray.get(pool.results.remote(trial))
    ray.get(pool.close.remote())  # stop its dispatcher, so it exits without noise
    ray.kill(pool)
    metric = cfg.eval.primary_metric
    for row in rows:
        print(f"step {row['step']:>7}  {metric} {row['metrics'][metric]:.4f}  {row['checkpoint']}")
    ledger = Ledger.for_run(cfg)
    print(f"ledger: {ledger.path}\nplot: {plot_curves(ledger, metric)}")


def _cmd_best(args: argparse.Namespace) -> None:
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


def _cmd_tune(args: argparse.Namespace) -> None:
    from raydr import config
    from raydr.tuning.search import run_search
    from raydr.tuning.summary import format_summary

    cfg = config.load(args.config, args.overrides)
    print(format_summary(run_search(cfg)))


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


class _UsageError(Exception):
    """A bad command line, raised instead of argparse's usage dump and exit."""


class _Parser(argparse.ArgumentParser):
    """argparse prints the whole usage block before its error; raise instead, so a bad command
    line ends like every other user error: one line, exit status 2."""

    def error(self, message: str):  # type: ignore[override]
        raise _UsageError(f"{self.prog}: {message} (see `{self.prog} --help`)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="raydr", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = verbs.add_parser(
        "import-beir", help="BEIR jsonl/tsv folder (or a BEIR dataset name) → Parquet tables"
    )
    p.add_argument(
        "src",
        help="BEIR folder (corpus.jsonl[.gz], queries.jsonl[.gz], qrels/), or a BEIR dataset "
        "name (e.g. scifact) to download from BEIR's site into $RAYDR_CACHE (~/.cache/raydr)",
    )
    p.add_argument("out", type=Path, help="output folder (written atomically)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--strict", action="store_true", help="qrels with unknown ids are errors")
    p.add_argument(
        "--dev-from",
        metavar="SPLIT",
        help="carve a 'dev' split for model selection out of SPLIT's queries (e.g. train)",
    )
    p.add_argument("--dev-queries", type=int, default=100, help="queries carved into dev")
    p.add_argument("--dev-seed", type=int, default=0, help="seed of the carving")
    p.add_argument("--md5", help="checksum of SRC's zip, for a BEIR name raydr does not list")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_import_beir)

    p = verbs.add_parser(
        "build-debian",
        help="an offline BEIR folder from Debian package descriptions (synopsis → description)",
    )
    p.add_argument("out", type=Path, help="output BEIR folder (written atomically)")
    p.add_argument(
        "--source",
        action="append",
        type=Path,
        metavar="FILE",
        help="a Debian control file (Translation-en, dpkg status; plain, gz, xz or lz4); "
        "repeat for more. Default: /var/lib/apt/lists/*Translation-en*",
    )
    p.add_argument("--queries", type=int, default=500, help="queries, drawn among the docs")
    p.add_argument("--docs", type=int, default=5000, help="documents in the corpus")
    p.add_argument("--seed", type=int, default=0, help="seed of the draw")
    p.add_argument(
        "--min-words", type=int, default=30, help="drop long descriptions shorter than this"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=_cmd_build_debian)

    for name, func, text in [
        ("evaluate", _cmd_evaluate, "dense retrieval quality of a model or checkpoint"),
        ("bm25", _cmd_bm25, "BM25 baseline run and metrics (bm25s)"),
        ("train", _cmd_train, "Ray Train dual-encoder training (cross-batch negatives)"),
        ("tune", _cmd_tune, "Ray Tune search, early-stopped on validation metrics"),
        (
            "mine-negatives",
            _cmd_mine,
            "BM25 hard negatives for training.split → training.negatives",
        ),
    ]:
        p = verbs.add_parser(name, help=text)
        p.add_argument("config", type=Path, help="job YAML (see jobs/)")
        p.add_argument(
            "overrides", nargs="*", default=[], metavar="key=value", help="config overrides"
        )
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
        if name == "evaluate":
            p.add_argument("--model", help="model folder to score instead of model.name")
            p.add_argument(
                "--subset",
                type=Path,
                help="a run's saved validation subset: score on the validators' queries and docs",
            )
        if name == "train":
            p.add_argument(
                "--no-eval", action="store_true", help="skip evaluating the final checkpoint"
            )
        if name == "mine-negatives":
            p.add_argument("--depth", type=int, default=30, help="negatives kept per query")
        p.set_defaults(func=func)

    p = verbs.add_parser(
        "validate", help="validate checkpoints with the actor pool (or --watch a folder)"
    )
    p.add_argument("config", type=Path)
    p.add_argument("checkpoints", nargs="*", type=Path, help="checkpoint folders to validate")
    p.add_argument("--watch", type=Path, help="validate every complete checkpoint appearing here")
    p.add_argument("--trial", help="ledger trial name (default: the config's name)")
    p.add_argument("--poll", type=float, default=5.0, help="seconds between folder scans")
    p.add_argument(
        "--settle", type=float, default=10.0, help="seconds a foreign folder must stay unchanged"
    )
    p.add_argument(
        "--timeout", type=float, default=0.0, help="stop watching after this many seconds"
    )
    p.set_defaults(func=_cmd_validate, overrides=[])

    p = verbs.add_parser("best", help="the best checkpoint of a run by validation metric")
    p.add_argument("run", type=Path, help="run folder (runs/NAME) or its validation ledger file")
    p.add_argument("--metric", default="nDCG@10")
    p.add_argument("--trial", help="only this trial")
    p.add_argument("--export", type=Path, help="copy the model there (HF + sentence-transformers)")
    p.set_defaults(func=_cmd_best)

    bench = verbs.add_parser("bench", help="benchmarks that write JSON (+ PNG)")
    benches = bench.add_subparsers(dest="bench", required=True, metavar="BENCH")
    from raydr.bench.encode import add_arguments as encode_args

    p = benches.add_parser("encode", help="encoding throughput and FLOP/s vs matmul peak")
    encode_args(p)
    p.set_defaults(func=_cmd_bench_encode)
    from raydr.bench.fidelity import add_arguments as fid_args
    from raydr.bench.fidelity import main as fid_main
    from raydr.bench.train_step import add_arguments as step_args
    from raydr.bench.train_step import main as step_main

    p = benches.add_parser(
        "validation-fidelity", help="subset strategies: Kendall tau and speed vs full"
    )
    fid_args(p)
    p.set_defaults(func=fid_main)

    from raydr.bench.async_validation import add_arguments as async_args
    from raydr.bench.async_validation import main as async_main

    p = benches.add_parser("async", help="training wall time: inline validation vs the actor pool")
    async_args(p)
    p.set_defaults(func=async_main)

    p = benches.add_parser("train-step", help="step time: cross-batch gather vs in-batch only")
    step_args(p)
    p.set_defaults(func=step_main)

    from raydr.bench.losses import add_arguments as losses_args
    from raydr.bench.losses import main as losses_main

    p = benches.add_parser(
        "losses", help="training recipes (negatives, losses) at one budget, selected on dev"
    )
    losses_args(p)
    p.set_defaults(func=losses_main)

    from raydr.bench.mining import add_arguments as mining_args
    from raydr.bench.mining import main as mining_main

    p = benches.add_parser(
        "mining", help="dynamic negatives: freshness vs the current model, Nyström fidelity, cost"
    )
    mining_args(p)
    p.set_defaults(func=mining_main)

    from raydr.bench.stopping import add_arguments as stopping_args
    from raydr.bench.stopping import main as stopping_main

    p = benches.add_parser(
        "stopping", help="early stopping under slow validation: each metric-delivery policy"
    )
    stopping_args(p)
    p.set_defaults(func=stopping_main)
    from raydr.bench.search import add_arguments as search_args
    from raydr.bench.search import main as search_main

    p = benches.add_parser(
        "search", help="an ASHA search against the same search unscheduled: steps saved, winners"
    )
    search_args(p)
    p.set_defaults(func=search_main)
    from raydr.bench.gpu import add_arguments as gpu_args
    from raydr.bench.gpu import main as gpu_main

    p = benches.add_parser(
        "gpu", help="bf16 encode vs matmul; training beside fractional-GPU validators"
    )
    gpu_args(p)
    p.set_defaults(func=gpu_main)
    from raydr.bench.autoscale import add_arguments as autoscale_args
    from raydr.bench.autoscale import main as autoscale_main

    p = benches.add_parser(
        "autoscale", help="a search on a fake cluster run by Ray's autoscaler: nodes over time"
    )
    autoscale_args(p)
    p.set_defaults(func=autoscale_main)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parse(argv)
    except _UsageError as err:
        print(f"raydr: error: {err}", file=sys.stderr)
        return 2
    return _run(args)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    # argparse cannot take positional overrides after an option (`CONFIG -q k=v`), so collect
    # leftover key=value words by hand; anything else is still an error.
    args, extra = parser.parse_known_args(argv)
    stray = [w for w in extra if w.startswith("-") or "=" not in w]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    if getattr(args, "checkpoints", None):
        # `validate CONFIG CKPT … key=value`: the checkpoint list takes every word, so hand the
        # key=value ones (that are not folders) back to the overrides.
        words = args.checkpoints
        args.checkpoints = [w for w in words if "=" not in str(w) or w.exists()]
        args.overrides = [*args.overrides, *(str(w) for w in words if w not in args.checkpoints)]
    return args


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("bm25s", "faiss", "httpx"):  # libraries that log at DEBUG on import
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        args.func(args)
    except RaydrError as err:
        _stop_ray()
        # Messages are meant to be one line; keep it so even when a library's text is not.
        print(f"raydr: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("raydr: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug, not bad input: keep the traceback, but in a file
        if args.verbose:
            raise
        _stop_ray()
        return _crash(exc)
    return 0


def _stop_ray() -> None:
    """Disconnect first, so Ray's forwarded worker logs end before our error line is printed:
    the line that says what went wrong stays the last thing on the terminal."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


def _crash(exc: Exception) -> int:
    """One line naming the error and a file holding its traceback; exit status 1 (a bug)."""
    import tempfile
    import traceback

    text = "".join(traceback.format_exception(exc))
    with tempfile.NamedTemporaryFile(
        "w", prefix="raydr-crash-", suffix=".log", delete=False
    ) as log_file:
        log_file.write(text)
    what = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
    print(
        f"raydr: error: unexpected {what} (a bug: traceback in {log_file.name}; -v prints it)",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
