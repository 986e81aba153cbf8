"""Readers for a dataset imported by ``raydr import-beir`` (see ``raydr.data.beir``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from raydr.data.schema import CORPUS, QRELS, QUERIES, SCHEMA_VERSION, conform
from raydr.errors import RaydrError


def load_corpus(root: Path | str) -> pa.Table:
    """The corpus table: ``doc_id``, ``title`` ("" when none), ``text``."""
    _manifest(root)
    return _read(Path(root) / "corpus.parquet", CORPUS)


def _corpus_file(root: Path | str) -> Path:
    _manifest(root)
    path = Path(root) / "corpus.parquet"
    if not path.is_file():
        raise RaydrError(f"{path}: missing; the dataset is incomplete, re-import it")
    return path


def corpus_size(root: Path | str) -> int:
    """Docs in the corpus, from the Parquet footer (no text is read)."""
    path = _corpus_file(root)
    try:
        return pq.ParquetFile(path).metadata.num_rows
    except (OSError, pa.ArrowException) as err:
        raise RaydrError(f"{path}: unreadable Parquet ({err})") from None


def corpus_ids(root: Path | str) -> pa.ChunkedArray:
    """The corpus's ``doc_id`` column alone, in file order (no text is read)."""
    path = _corpus_file(root)
    ids = pa.schema([CORPUS.field("doc_id")])
    try:
        table = pq.read_table(path, columns=["doc_id"])
    except (OSError, pa.ArrowException) as err:
        raise RaydrError(f"{path}: unreadable Parquet ({err})") from None
    return conform(table, ids, str(path)).column("doc_id")


def iter_corpus(root: Path | str, rows: int) -> Iterator[pa.Table]:
    """The corpus table (as ``load_corpus`` gives it) in slices of at most ``rows`` rows, read
    a record batch at a time: memory is a slice's, not the corpus's."""
    path = _corpus_file(root)
    try:
        # One row group at a time: no read-ahead threads or pre-buffering, which hold several.
        reader = pq.ParquetFile(path, pre_buffer=False)
        for batch in reader.iter_batches(batch_size=rows, use_threads=False):
            yield conform(pa.Table.from_batches([batch]), CORPUS, str(path))
    except (OSError, pa.ArrowException) as err:
        raise RaydrError(f"{path}: unreadable Parquet ({err})") from None


def load_queries(root: Path | str) -> pa.Table:
    """All queries (``query_id``, ``text``), including those without qrels."""
    _manifest(root)
    return _read(Path(root) / "queries.parquet", QUERIES)


def load_qrels(root: Path | str, split: str) -> dict[str, dict[str, int]]:
    """Relevance judgements of ``split``: query_id -> {doc_id: relevance}. ``a+b`` is the union
    of splits ``a`` and ``b`` (a refit trains on train+dev); a query judged in both keeps each
    doc's higher relevance."""
    qrels: dict[str, dict[str, int]] = {}
    for path in qrels_files(root, split):
        table = _read(path, QRELS)
        for query_id, doc_id, relevance in zip(*table.to_pydict().values(), strict=True):
            judged = qrels.setdefault(query_id, {})
            judged[doc_id] = max(relevance, judged.get(doc_id, relevance))
    return qrels


def qrels_files(root: Path | str, split: str) -> list[Path]:
    """The Parquet files behind ``split`` (``a+b``: one per part), each checked to exist."""
    available = splits(root)
    parts = split.split("+")
    for part in parts:
        if part not in available:
            raise RaydrError(f"{root}: no qrels split {part!r} (available: {', '.join(available)})")
    if len(set(parts)) < len(parts):
        raise RaydrError(f"{root}: split {split!r} names a split twice")
    return [Path(root) / "qrels" / f"{part}.parquet" for part in parts]


def splits(root: Path | str) -> list[str]:
    """The qrels splits of the dataset, sorted (e.g. ``["dev", "test", "train"]``)."""
    return sorted(_manifest(root)["splits"])


def _manifest(root: Path | str) -> dict[str, Any]:
    root = Path(root)
    path = root / "manifest.json"
    if not path.is_file():
        if any((root / name).is_file() for name in ("corpus.jsonl", "corpus.jsonl.gz")):
            raise RaydrError(
                f"{root}: a raw BEIR directory, not an imported dataset;"
                f" run `raydr import-beir {root} OUT` first and use OUT"
            )
        raise RaydrError(
            f"{root}: not an imported raydr dataset (no manifest.json);"
            " create one with `raydr import-beir SRC OUT`"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise RaydrError(f"{path}: unreadable manifest ({err})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("splits"), dict):
        raise RaydrError(f"{path}: not a raydr manifest (expected an object with 'splits')")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise RaydrError(
            f"{path}: schema_version {version!r}, expected {SCHEMA_VERSION};"
            " re-import with `raydr import-beir --overwrite`"
        )
    return manifest


def _read(path: Path, schema: pa.Schema) -> pa.Table:
    if not path.is_file():
        raise RaydrError(f"{path}: missing; the dataset is incomplete, re-import it")
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as err:
        raise RaydrError(f"{path}: unreadable Parquet ({err})") from None
    return conform(table, schema, str(path))
