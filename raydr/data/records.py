"""Training records in the formats people already hold, read one at a time.

A record is one query with its positive passages and, optionally, hard negatives. Three
shapes are read:

- **Tevatron** (JSON lines, or a table with these columns): ``query_id`` (optional), ``query``,
  ``positive_passages`` and ``negative_passages``. Each passage is ``{docid, title, text}``;
  ``docid`` and ``title`` are optional.
- **sentence-transformers** (a table, or JSON lines of flat objects): text columns
  ``anchor, positive[, negative…]``. As sentence-transformers itself does, the columns are
  taken by position: the first is the query, the second its positive, and the rest are
  negatives. A numeric column (``label``, ``score``) marks a scored-pair dataset, which is
  not this shape.
- **Tables**: a Parquet file, or a Hugging Face ``datasets`` folder from ``save_to_disk``.
  The latter is read with pyarrow, since its ``data-*.arrow`` files are Arrow IPC streams, so
  ``datasets`` is not needed. A ``DatasetDict`` folder gives the ``split`` asked for.

Everything streams: a batch of rows or one line at a time. Every error names the file and the
line (JSON lines) or row (tables), and the field.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from raydr.data.lines import numbered_lines
from raydr.errors import RaydrError

_BATCH = 1024  # table rows decoded at a time


@dataclass(frozen=True)
class Passage:
    doc_id: str  # the source's docid, or one derived from the text (``text_id``)
    title: str
    text: str


@dataclass
class Record:
    where: str  # "FILE: line N" or "FILE: row N", for errors about this record
    query_id: str
    query: str
    positives: list[Passage]
    negatives: list[Passage] = field(default_factory=list)


def text_id(prefix: str, *texts: str) -> str:
    """A stable id for an unnamed passage or query: the same text, the same id (de-duplicated
    by text). 16 hex digits of SHA-1: a collision among 10^9 texts is ~3e-2 likely at most."""
    digest = hashlib.sha1("\x1f".join(texts).encode("utf-8")).hexdigest()[:16]
    return f"{prefix}{digest}"


def read_records(path: Path, split: str = "train") -> Iterator[Record]:
    """Records of a JSON-lines file (``.jsonl``, ``.json``, ``.gz``), a Parquet file, or a
    ``datasets`` folder (``split`` picks one of a ``DatasetDict``)."""
    if not path.exists():
        raise RaydrError(f"{path}: not found")
    if path.is_dir():
        return _table_records(_hf_batches(path, split), path)
    if path.name.endswith((".parquet", ".pq")):
        return _table_records(_parquet_batches(path), path)
    if path.name.endswith((".jsonl", ".jsonl.gz", ".json", ".json.gz")):
        return _jsonl_records(path)
    raise RaydrError(
        f"{path}: unknown training file type; expected .jsonl[.gz], .parquet or a "
        "`datasets` folder (save_to_disk)"
    )


# --- JSON lines ------------------------------------------------------------------------------


def json_objects(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """("FILE: line N", the object) for each non-blank line of a JSON-lines file."""
    for n, line in numbered_lines(path):
        if not line.strip():
            continue
        where = f"{path}: line {n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise RaydrError(f"{where}: not JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(obj, dict):
            raise RaydrError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        yield where, obj


def _jsonl_records(path: Path) -> Iterator[Record]:
    reader = None
    for where, obj in json_objects(path):
        if reader is None:  # the first record decides the shape of the file
            reader = _tevatron if "positive_passages" in obj else _flat_reader(list(obj), where)
        yield reader(obj, where)


# --- tables ----------------------------------------------------------------------------------


def _parquet_batches(path: Path) -> Iterator[pa.RecordBatch]:
    import pyarrow.parquet as pq

    try:
        # No pre-buffering or read-ahead: one batch of rows in memory at a time.
        reader = pq.ParquetFile(path, pre_buffer=False)
        yield from reader.iter_batches(batch_size=_BATCH, use_threads=False)
    except (OSError, pa.ArrowException) as err:
        raise RaydrError(f"{path}: unreadable Parquet ({err})") from None


def _hf_batches(folder: Path, split: str) -> Iterator[pa.RecordBatch]:
    """A ``save_to_disk`` folder: ``state.json`` lists its Arrow stream files in order."""
    if (folder / "dataset_dict.json").is_file():
        splits = _json_file(folder / "dataset_dict.json").get("splits", [])
        if split not in splits:
            raise RaydrError(
                f"{folder}: a DatasetDict without split {split!r} (has: {', '.join(splits)}); "
                "pick one with --split"
            )
        folder = folder / split
    state = folder / "state.json"
    if not state.is_file():
        raise RaydrError(
            f"{folder}: not a `datasets` folder (no state.json or dataset_dict.json from "
            "save_to_disk)"
        )
    files = [f.get("filename") for f in _json_file(state).get("_data_files", [])]
    if not files or not all(isinstance(f, str) for f in files):
        raise RaydrError(f"{state}: _data_files: expected a list of {{filename: ...}}")
    for name in files:
        path = folder / name
        try:
            with pa.memory_map(str(path)) as source:
                yield from pa.ipc.open_stream(source)
        except (OSError, pa.ArrowException) as err:
            raise RaydrError(f"{path}: unreadable Arrow stream ({err})") from None


def _json_file(path: Path) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RaydrError(f"{path}: unreadable JSON ({err})") from None
    if not isinstance(obj, dict):
        raise RaydrError(f"{path}: expected a JSON object")
    return obj


def _table_records(batches: Iterator[pa.RecordBatch], path: Path) -> Iterator[Record]:
    reader, row = None, 0
    for batch in batches:
        if reader is None:
            names = batch.schema.names
            if "positive_passages" in names:
                reader = _tevatron
            else:
                _check_text_columns(batch.schema, path)
                reader = _flat_reader(names, f"{path}: columns")
        for obj in batch.to_pylist():
            row += 1
            yield reader(obj, f"{path}: row {row}")


def _check_text_columns(schema: pa.Schema, path: Path) -> None:
    for f in schema:
        if not pa.types.is_string(f.type) and not pa.types.is_large_string(f.type):
            raise RaydrError(
                f"{path}: column {f.name!r} is {f.type}, not text: raydr trains on "
                "(anchor, positive[, negative…]) text columns, not scored pairs"
            )


# --- the two shapes --------------------------------------------------------------------------


def _tevatron(obj: dict[str, Any], where: str) -> Record:
    query = obj.get("query")
    if not isinstance(query, str) or not query.strip():
        got = "missing" if query is None else f"a {type(query).__name__}"
        hint = " (pre-tokenised ids? give the query text)" if isinstance(query, list) else ""
        raise RaydrError(f"{where}: field 'query': expected text, got {got}{hint}")
    qid = obj.get("query_id")
    if qid is not None and not isinstance(qid, str | int):
        raise RaydrError(f"{where}: field 'query_id': expected a string or integer")
    positives = _passages(obj.get("positive_passages"), "positive_passages", where)
    if not positives:
        raise RaydrError(f"{where}: field 'positive_passages': empty; a query needs a positive")
    negatives = _passages(obj.get("negative_passages") or [], "negative_passages", where)
    qid = str(qid) if qid is not None else text_id("q", query)
    return Record(where, qid, query, positives, negatives)


def _passages(items: Any, name: str, where: str) -> list[Passage]:
    if not isinstance(items, list):
        raise RaydrError(f"{where}: field {name!r}: expected a list of passages")
    out = []
    for i, p in enumerate(items):
        at = f"{where}: field '{name}[{i}]"
        if not isinstance(p, dict):
            raise RaydrError(f"{at}': expected an object with 'text'")
        text, title, docid = p.get("text"), p.get("title") or "", p.get("docid")
        if not isinstance(text, str) or not text.strip():
            raise RaydrError(f"{at}.text': expected text, got {_kind(text)}")
        if not isinstance(title, str):
            raise RaydrError(f"{at}.title': expected text, got {_kind(title)}")
        if docid is not None and not isinstance(docid, str | int):
            raise RaydrError(f"{at}.docid': expected a string or integer, got {_kind(docid)}")
        doc_id = str(docid) if docid is not None else text_id("d", title, text)
        out.append(Passage(doc_id, title, text))
    return out


def _flat_reader(names: list[str], where: str):
    """sentence-transformers' columns, by position: anchor, positive, negatives."""
    if len(names) < 2:
        raise RaydrError(
            f"{where}: {len(names)} column(s) {names}; expected (anchor, positive[, negative…]) "
            "or Tevatron's positive_passages"
        )

    def read(obj: dict[str, Any], at: str) -> Record:
        texts = []
        for name in names:
            value = obj.get(name)
            if not isinstance(value, str) or not value.strip():
                raise RaydrError(f"{at}: field {name!r}: expected text, got {_kind(value)}")
            texts.append(value)
        if len(obj) != len(names):
            raise RaydrError(f"{at}: fields {sorted(obj)}; the first record had {names}")
        query, positive, *negatives = texts
        passages = [Passage(text_id("d", "", t), "", t) for t in (positive, *negatives)]
        return Record(at, text_id("q", query), query, passages[:1], passages[1:])

    return read


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, str):
        return "empty text"
    return f"a {type(value).__name__}"
