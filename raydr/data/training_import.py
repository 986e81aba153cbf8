"""``raydr import-training``: a file of training records → a raydr dataset, in bounded memory.

The records (``raydr.data.records``: Tevatron, sentence-transformers, Parquet, ``datasets``)
become the tables ``import-beir`` writes, plus the hard negatives:

- ``corpus.parquet``: every passage the records name, de-duplicated by docid. Passages without
  an id are de-duplicated by text. With ``corpus``, a BEIR or Tevatron corpus file is read
  first, so that validation searches the whole collection, not only the passages the records
  happen to name.
- ``queries.parquet`` and ``qrels/train.parquet``. A query met twice keeps every positive.
  ``test_queries`` carves a seeded ``test`` split to report on, and ``dev_queries`` a ``dev``
  split for model selection from the rest, as ``import-beir --dev-from`` does.
- ``negatives.parquet``: each query's negatives in the order given, judged ones left out. This
  is the file for ``training.negatives``.

Memory stays flat in the number of records. They stream into a scratch SQLite database, which
lives inside the output's temporary folder and is deleted before the rename. SQLite de-duplicates
and sorts on disk; the tables are then written from it in batches. A docid or query id met
again with another text is an error naming both places.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from raydr.atomic import atomic_dir
from raydr.data.beir import CORPUS_ROW_GROUP
from raydr.data.groups import NEGATIVES
from raydr.data.records import Passage, Record, json_objects, read_records
from raydr.data.schema import CORPUS, QRELS, QUERIES, SCHEMA_VERSION
from raydr.data.split import DEV, carve_queries
from raydr.errors import RaydrError

SPLIT = "train"
TEST = "test"
NEGATIVES_FILE = "negatives.parquet"
_COMMIT_EVERY = 10_000  # records per transaction
_WRITE_BATCH = 8_192  # rows per fetch when writing the tables

_SCHEMA = """
CREATE TABLE docs (doc_id TEXT PRIMARY KEY, digest BLOB, title TEXT, text TEXT, at TEXT,
                   clash TEXT);
CREATE TABLE queries (query_id TEXT PRIMARY KEY, digest BLOB, text TEXT, at TEXT, clash TEXT);
CREATE TABLE qrels (query_id TEXT, doc_id TEXT, PRIMARY KEY (query_id, doc_id)) WITHOUT ROWID;
CREATE TABLE negs (query_id TEXT, doc_id TEXT, seq INTEGER,
                   PRIMARY KEY (query_id, doc_id)) WITHOUT ROWID;
"""
# A second sighting of an id with another text marks the first row with where it was seen.
_DOC = (
    "INSERT INTO docs VALUES (?, ?, ?, ?, ?, NULL) ON CONFLICT (doc_id) DO UPDATE SET "
    "clash = coalesce(clash, excluded.at) WHERE digest != excluded.digest"
)
_QUERY = (
    "INSERT INTO queries VALUES (?, ?, ?, ?, NULL) ON CONFLICT (query_id) DO UPDATE SET "
    "clash = coalesce(clash, excluded.at) WHERE digest != excluded.digest"
)


def import_training(
    src: Path | str,
    out: Path | str,
    *,
    corpus: Path | str | None = None,
    split: str = SPLIT,
    dev_queries: int = 0,
    test_queries: int = 0,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Import the training records of ``src`` into the dataset folder ``out``; → a report."""
    from tqdm import tqdm

    src, out = Path(src), Path(out)
    records = read_records(src, split)  # checks the path before any output exists
    if corpus is not None and not Path(corpus).is_file():
        raise RaydrError(f"--corpus {corpus}: not found")
    with atomic_dir(out, overwrite=overwrite) as tmp:
        db = _scratch(tmp / "import.sqlite")
        try:
            corpus_docs = _ingest_corpus(db, Path(corpus)) if corpus is not None else 0
            seen, batch = 0, _Batch()
            for seen, record in enumerate(
                tqdm(records, desc="records", unit=" rec", disable=not progress), 1
            ):
                batch.add(record, seen)
                if seen % _COMMIT_EVERY == 0:
                    batch.flush(db)
                    db.commit()
            batch.flush(db)
            db.commit()
            if not seen:
                raise RaydrError(f"{src}: no training records")
            _check_clashes(db)
            report = _write(db, tmp, dev_queries, test_queries, seed)
        finally:
            db.close()
            (tmp / "import.sqlite").unlink(missing_ok=True)
        report = {
            "source": str(src.resolve()),
            "records": seen,
            "corpus_file_docs": corpus_docs,
            **report,
        }
        manifest = {"schema_version": SCHEMA_VERSION, "format": "training", **report}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return {**report, "out": str(out), "negatives": str(out / NEGATIVES_FILE)}


def _scratch(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path)
    # A scratch file inside a folder that is renamed only on success: no journal, no fsync.
    db.executescript("PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;")
    db.execute("PRAGMA cache_size = -65536")  # 64 MiB of pages, whatever the input's size
    db.executescript(_SCHEMA)
    return db


def _digest(*texts: str) -> bytes:
    return hashlib.blake2b("\x1f".join(texts).encode("utf-8"), digest_size=8).digest()


def _doc_row(p: Passage, at: str) -> tuple:
    return (p.doc_id, _digest(p.title, p.text), p.title, p.text, at)


class _Batch:
    """Rows of up to ``_COMMIT_EVERY`` records, inserted table by table in key order.

    Sorted, a batch's inserts walk each B-tree once from left to right instead of jumping
    around it, which matters once a table outgrows SQLite's page cache (1.17x faster at 10^6
    records, bench/RESULTS.md). The sort is stable, so rows of one id keep their records' order,
    and the first sighting of an id is still the one a clash is reported against."""

    def __init__(self) -> None:
        self.queries: list[tuple] = []
        self.docs: list[tuple] = []
        self.qrels: list[tuple] = []
        self.negs: list[tuple] = []

    def add(self, r: Record, seq: int) -> None:
        self.queries.append((r.query_id, _digest(r.query), r.query, r.where))
        self.docs.extend(_doc_row(p, r.where) for p in (*r.positives, *r.negatives))
        self.qrels.extend((r.query_id, p.doc_id) for p in r.positives)
        # seq orders a query's negatives as given, across the records that name it.
        self.negs.extend((r.query_id, p.doc_id, seq * 4096 + i) for i, p in enumerate(r.negatives))

    def flush(self, db: sqlite3.Connection) -> None:
        for sql, rows, key_width in (
            (_QUERY, self.queries, 1),
            (_DOC, self.docs, 1),
            ("INSERT OR IGNORE INTO qrels VALUES (?, ?)", self.qrels, 2),
            ("INSERT OR IGNORE INTO negs VALUES (?, ?, ?)", self.negs, 2),
        ):
            rows.sort(key=lambda row, n=key_width: row[:n])  # the table's primary key
            db.executemany(sql, rows)
            rows.clear()


def _ingest_corpus(db: sqlite3.Connection, path: Path) -> int:
    """A BEIR (``_id``) or Tevatron (``docid``) corpus file of JSON lines → docs."""
    n_docs = 0
    for where, obj in json_objects(path):
        doc_id = obj.get("_id", obj.get("docid"))
        text, title = obj.get("text"), obj.get("title") or ""
        if not isinstance(doc_id, str | int) or isinstance(doc_id, bool):
            raise RaydrError(f"{where}: field '_id' (or 'docid'): expected a string or integer")
        if not isinstance(text, str) or not isinstance(title, str):
            raise RaydrError(f"{where}: fields 'title' and 'text': expected text")
        db.execute(_DOC, _doc_row(Passage(str(doc_id), title, text), where))
        n_docs += 1
    db.commit()
    return n_docs


def _check_clashes(db: sqlite3.Connection) -> None:
    for table, key, what in (("docs", "doc_id", "docid"), ("queries", "query_id", "query id")):
        row = db.execute(
            f"SELECT {key}, at, clash FROM {table} WHERE clash IS NOT NULL LIMIT 1"
        ).fetchone()
        if row:
            raise RaydrError(
                f"{row[2]}: {what} {row[0]!r} has another text than at {row[1]}; ids must name "
                "one text"
            )


def _write(
    db: sqlite3.Connection, tmp: Path, dev_queries: int, test_queries: int, seed: int
) -> dict[str, Any]:
    """The tables, each streamed out of the database in key order."""
    docs = _write_table(
        db, "SELECT doc_id, title, text FROM docs ORDER BY doc_id", CORPUS, tmp / "corpus.parquet"
    )
    queries = _write_table(
        db, "SELECT query_id, text FROM queries ORDER BY query_id", QUERIES, tmp / "queries.parquet"
    )
    (tmp / "qrels").mkdir()
    train = tmp / "qrels" / f"{SPLIT}.parquet"
    rows = _write_table(
        db, "SELECT query_id, doc_id, 1 FROM qrels ORDER BY query_id, doc_id", QRELS, train
    )
    splits: dict[str, Any] = {SPLIT: {"queries": queries, "rows": rows}}
    kept = None
    # Test first, then dev from what is left; each needs the split's query ids and judgements
    # (not the texts) in memory.
    for name, n, flag in (
        (TEST, test_queries, "--test-queries"),
        (DEV, dev_queries, "--dev-queries"),
    ):
        if not n:
            continue
        kept, carved = carve_queries(kept or pq.read_table(train), n, seed, flag)
        pq.write_table(carved, tmp / "qrels" / f"{name}.parquet")
        splits[name] = {
            "queries": _distinct(carved),
            "rows": carved.num_rows,
            "carved_from": SPLIT,
            "seed": seed,
        }
    if kept is not None:
        pq.write_table(kept, train)
        splits[SPLIT] = {"queries": _distinct(kept), "rows": kept.num_rows}
    negatives = _write_negatives(db, tmp / NEGATIVES_FILE)
    return {"docs": docs, "queries": queries, "splits": splits, "negatives": negatives}


def _distinct(qrels: pa.Table) -> int:
    return len(set(qrels["query_id"].to_pylist()))


def _write_table(db: sqlite3.Connection, sql: str, schema: pa.Schema, path: Path) -> int:
    n = 0
    with pq.ParquetWriter(path, schema) as writer:
        for chunk in _fetch(db, sql):
            columns = list(zip(*chunk, strict=True))
            writer.write_table(
                pa.table([list(c) for c in columns], schema=schema),
                row_group_size=CORPUS_ROW_GROUP,
            )
            n += len(chunk)
    return n


def _write_negatives(db: sqlite3.Connection, path: Path) -> dict[str, int]:
    """query_id → its negatives in the order given, judged docs left out."""
    sql = (
        "SELECT n.query_id, n.doc_id FROM negs n WHERE NOT EXISTS (SELECT 1 FROM qrels q "
        "WHERE q.query_id = n.query_id AND q.doc_id = n.doc_id) ORDER BY n.query_id, n.seq"
    )
    queries = total = 0
    fewest = None
    with pq.ParquetWriter(path, NEGATIVES) as writer:
        for ids, lists in _grouped(_fetch(db, sql)):
            writer.write_table(pa.table([ids, lists], schema=NEGATIVES))
            queries += len(ids)
            total += sum(map(len, lists))
            least = min(map(len, lists))
            fewest = least if fewest is None else min(fewest, least)
    return {"queries": queries, "negatives": total, "fewest_per_query": fewest or 0}


def _grouped(chunks: Iterator[list[tuple]]) -> Iterator[tuple[list[str], list[list[str]]]]:
    """(query_id, doc_id) rows sorted by query → batches of (query ids, their doc lists). A
    batch is yielded only when the next query starts, so each list in it is complete."""
    ids: list[str] = []
    lists: list[list[str]] = []
    for chunk in chunks:
        for qid, doc in chunk:
            if ids and ids[-1] == qid:
                lists[-1].append(doc)
                continue
            if len(ids) >= _WRITE_BATCH:
                yield ids, lists
                ids, lists = [], []
            ids.append(qid)
            lists.append([doc])
    if ids:
        yield ids, lists


def _fetch(db: sqlite3.Connection, sql: str) -> Iterator[list[tuple]]:
    cursor = db.execute(sql)
    while chunk := cursor.fetchmany(_WRITE_BATCH):
        yield chunk
