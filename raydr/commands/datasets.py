"""``raydr import-beir``, ``import-training``, ``build-debian``, ``build-manpages``,
``mine-negatives``: datasets in, negatives out."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from raydr.commands import job_arguments
from raydr.errors import RaydrError
from raydr.verb import Verb


def import_beir(args: argparse.Namespace) -> None:
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


def build_debian(args: argparse.Namespace) -> None:
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


def build_manpages(args: argparse.Namespace) -> None:
    from raydr.data.manpages import build_manpages_collection, default_source

    report = build_manpages_collection(
        args.source or [default_source()],
        args.out,
        num_queries=args.queries,
        num_docs=args.docs,
        seed=args.seed,
        min_words=args.min_words,
        max_words=args.max_words,
        overwrite=args.overwrite,
    )
    print(json.dumps(report, indent=2))


def import_training(args: argparse.Namespace) -> None:
    from raydr.data.training_import import import_training

    for flag, n in (("--dev-queries", args.dev_queries), ("--test-queries", args.test_queries)):
        if n < 0:
            raise RaydrError(f"{flag} {n}: expected a count >= 0")
    report = import_training(
        args.src,
        args.out,
        corpus=args.corpus,
        split=args.split,
        dev_queries=args.dev_queries,
        test_queries=args.test_queries,
        seed=args.seed,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    print(json.dumps(report, indent=2))


def mine_negatives(args: argparse.Namespace) -> None:
    from raydr import config
    from raydr.mining.bm25_negatives import mine_bm25_negatives

    cfg = config.load(args.config, args.overrides)
    if cfg.training.negatives is None:
        raise RaydrError(f"{args.config}: training.negatives: set the output path to write")
    split = cfg.training.split
    if args.refit:
        from raydr.refit import refit_split

        # Only the dev queries are mined; training's negatives stay as they are, byte for byte.
        split = refit_split(cfg).split("+")[-1]
    counts = mine_bm25_negatives(
        cfg.data.path, split, cfg.training.negatives, args.depth, cfg.bm25, add=args.refit
    )
    print(json.dumps({"out": str(cfg.training.negatives), **counts}))


def _import_beir_arguments(p: argparse.ArgumentParser) -> None:
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


def _build_debian_arguments(p: argparse.ArgumentParser) -> None:
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


def _build_manpages_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", type=Path, help="output BEIR folder (written atomically)")
    p.add_argument(
        "--source",
        action="append",
        type=Path,
        metavar="DIR",
        help="a folder of manual pages (man<N>/NAME.N[.gz]); repeat for more. Default: "
        "/usr/share/man. Offline: apt-get download manpages manpages-dev, then "
        "dpkg-deb -x each .deb into DIR and pass DIR/usr/share/man",
    )
    p.add_argument("--queries", type=int, default=300, help="queries, drawn among the docs")
    p.add_argument("--docs", type=int, default=800, help="documents in the corpus")
    p.add_argument("--seed", type=int, default=0, help="seed of the draw")
    p.add_argument("--min-words", type=int, default=30, help="drop descriptions shorter than this")
    p.add_argument("--max-words", type=int, default=300, help="a document's first words kept")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")


def _import_training_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "src",
        type=Path,
        help="training records: Tevatron JSON lines (query, positive_passages, "
        "negative_passages), sentence-transformers columns (anchor, positive[, negative…]) as "
        "JSON lines or Parquet, or a `datasets` save_to_disk folder of either",
    )
    p.add_argument("out", type=Path, help="output dataset folder (written atomically)")
    p.add_argument(
        "--corpus",
        type=Path,
        help="a BEIR or Tevatron corpus file (JSON lines: _id or docid, title, text) to search "
        "beyond the passages the records name",
    )
    p.add_argument("--split", default="train", help="the split of a DatasetDict folder")
    p.add_argument(
        "--dev-queries", type=int, default=0, help="queries carved into a 'dev' split (0: none)"
    )
    p.add_argument(
        "--test-queries", type=int, default=0, help="queries carved into a 'test' split first"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the carvings")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _mine_arguments(p: argparse.ArgumentParser) -> None:
    job_arguments(p)
    p.add_argument("--depth", type=int, default=30, help="negatives kept per query")
    p.add_argument(
        "--refit",
        action="store_true",
        help="add validation.split's queries to training.negatives, for `raydr train --refit`",
    )


VERBS = (
    Verb(
        "import-beir",
        "BEIR jsonl/tsv folder (or a BEIR dataset name) → Parquet tables",
        _import_beir_arguments,
        import_beir,
    ),
    Verb(
        "import-training",
        "training records (Tevatron, sentence-transformers, Parquet, datasets) → Parquet "
        "tables and training.negatives",
        _import_training_arguments,
        import_training,
    ),
    Verb(
        "build-debian",
        "an offline BEIR folder from Debian package descriptions (synopsis → description)",
        _build_debian_arguments,
        build_debian,
    ),
    Verb(
        "build-manpages",
        "an offline third collection from manual pages (NAME summary → DESCRIPTION)",
        _build_manpages_arguments,
        build_manpages,
    ),
    Verb(
        "mine-negatives",
        "BM25 hard negatives for training.split → training.negatives",
        _mine_arguments,
        mine_negatives,
    ),
)
