"""Import a BEIR dataset directory into raydr's Parquet layout.

Source: ``corpus.jsonl[.gz]``, ``queries.jsonl[.gz]``, ``qrels/<split>.tsv[.gz]``.
Output (written atomically as a whole): ``corpus.parquet``, ``queries.parquet``,
``qrels/<split>.parquet`` and ``manifest.json``.

Parsing goes through pyarrow. Its error messages give block-relative rows that ignore blank
lines, so when it fails (or a null/duplicate id turns up afterwards) the file is re-scanned
line by line in Python only to name the first bad line exactly.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.json as pj
import pyarrow.parquet as pq

from raydr.atomic import atomic_dir
from raydr.data.lines import numbered_lines as _lines
from raydr.data.schema import CORPUS, QRELS, QUERIES, SCHEMA_VERSION
from raydr.data.split import DEV, carve_queries
from raydr.errors import RaydrError

log = logging.getLogger(__name__)

_BEIR_HEADER = ["query-id", "corpus-id", "score"]
# One JSON line must fit in one block; pyarrow's 1 MiB default rejects long documents.
_JSON_BLOCK_SIZE = 16 << 20
_EXAMPLES = 5  # ids quoted in a warning
CORPUS_ROW_GROUP = 1 << 16  # docs per Parquet row group of corpus.parquet
_INT = re.compile(r"-?[0-9]+")  # what pyarrow accepts: no "+", no spaces


def import_beir(
    src: Path | str,
    out: Path | str,
    *,
    overwrite: bool = False,
    strict: bool = False,
    dev_from: str | None = None,
    dev_queries: int = 100,
    dev_seed: int = 0,
) -> dict[str, Any]:
    """Import the BEIR directory ``src`` into ``out``; return a report of counts and warnings.

    Qrels rows naming unknown query or doc ids are dropped with a warning, or are an error
    with ``strict=True``. Duplicate (query, doc) rows keep the first. ``dev_from``: carve a
    ``dev`` split of ``dev_queries`` queries (seeded by ``dev_seed``) out of that split, which
    keeps the rest; the manifest records how. Raises ``RaydrError``.
    """
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise RaydrError(f"{src}: not a directory (expected a BEIR dataset directory)")
    corpus_path = _find(src, "corpus.jsonl")
    queries_path = _find(src, "queries.jsonl")
    qrels_paths = _find_qrels(src)
    if dev_from is not None:
        if dev_from not in qrels_paths:
            raise RaydrError(
                f"--dev-from {dev_from}: {src}/qrels has no such split "
                f"(available: {', '.join(sorted(qrels_paths))})"
            )
        if DEV in qrels_paths:
            raise RaydrError(
                f"--dev-from {dev_from}: {qrels_paths[DEV]} already is a {DEV!r} split; use it "
                f"as it is (drop --dev-from)"
            )
    warnings: list[str] = []

    with atomic_dir(out, overwrite=overwrite) as tmp:
        raw = _read_jsonl(corpus_path, {"_id": True, "title": False, "text": True})
        corpus = pa.table([raw["_id"], pc.fill_null(raw["title"], ""), raw["text"]], schema=CORPUS)
        raw = _read_jsonl(queries_path, {"_id": True, "text": True})
        queries = pa.table([raw["_id"], raw["text"]], schema=QUERIES)
        # Row groups of 64k docs: a reader that streams the corpus (the store build) holds one
        # group's text at a time, not a million docs'.
        pq.write_table(corpus, tmp / "corpus.parquet", row_group_size=CORPUS_ROW_GROUP)
        pq.write_table(queries, tmp / "queries.parquet")

        (tmp / "qrels").mkdir()
        splits: dict[str, dict[str, Any]] = {}
        for split, path in qrels_paths.items():
            qrels = _read_qrels(path)
            qrels, duplicates = _drop_duplicates(qrels, path, warnings)
            qrels, unknown = _drop_unknown(qrels, path, corpus, queries, strict, warnings)
            if qrels.num_rows == 0:
                _warn(warnings, f"{path}: no qrels rows left; split {split!r} is empty")
            splits[split] = {"dropped_duplicate": duplicates, "dropped_unknown": unknown}
            if split == dev_from:
                qrels, dev = carve_queries(qrels, dev_queries, dev_seed, f"--dev-queries ({path})")
                pq.write_table(dev, tmp / "qrels" / f"{DEV}.parquet")
                splits[DEV] = {
                    **_counts(dev),
                    "carved_from": dev_from,
                    "seed": dev_seed,
                    "dropped_duplicate": 0,
                    "dropped_unknown": 0,
                }
            pq.write_table(qrels, tmp / "qrels" / f"{split}.parquet")
            splits[split].update(_counts(qrels))

        report: dict[str, Any] = {
            "source": str(src.resolve()),
            "docs": corpus.num_rows,
            "queries": queries.num_rows,
            "splits": splits,
            "dropped_qrels": sum(
                s["dropped_duplicate"] + s["dropped_unknown"] for s in splits.values()
            ),
        }
        # The temp dir is renamed as a whole, so a plain write is atomic enough here.
        manifest = {"schema_version": SCHEMA_VERSION, "format": "beir", **report}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return {**report, "out": str(out), "warnings": warnings}


def _counts(qrels: pa.Table) -> dict[str, int]:
    return {"queries": pc.count_distinct(qrels["query_id"]).as_py(), "rows": qrels.num_rows}


# --- locating the input ---------------------------------------------------------------------


def _find(src: Path, name: str) -> Path:
    found = [p for p in (src / name, src / f"{name}.gz") if p.is_file()]
    if not found:
        raise RaydrError(f"{src}: no {name} or {name}.gz (expected a BEIR dataset directory)")
    if len(found) > 1:
        raise RaydrError(f"{src}: both {name} and {name}.gz exist; keep one")
    return found[0]


def _find_qrels(src: Path) -> dict[str, Path]:
    qdir = src / "qrels"
    paths: dict[str, Path] = {}
    for path in sorted([*qdir.glob("*.tsv"), *qdir.glob("*.tsv.gz")]):
        split = path.name.removesuffix(".gz").removesuffix(".tsv")
        if split in paths:
            raise RaydrError(
                f"{qdir}: split {split!r} given twice ({paths[split].name}, {path.name})"
            )
        paths[split] = path
    if not paths:
        raise RaydrError(
            f"{qdir}: no qrels files (expected qrels/<split>.tsv, e.g. qrels/test.tsv)"
        )
    return paths


# --- reading --------------------------------------------------------------------------------


def _read_jsonl(path: Path, fields: dict[str, bool]) -> pa.Table:
    """Read string ``fields`` (name -> required) of a JSON-lines file; ``_id`` must be unique."""
    schema = pa.schema([(name, pa.string()) for name in fields])
    table, failure = None, "null, empty or duplicate '_id'"
    try:
        table = pj.read_json(
            path,
            read_options=pj.ReadOptions(block_size=_JSON_BLOCK_SIZE),
            parse_options=pj.ParseOptions(
                explicit_schema=schema, unexpected_field_behavior="ignore"
            ),
        )
        table.validate(full=True)  # the JSON reader lets invalid UTF-8 through; this catches it
    except (pa.ArrowException, OSError) as err:
        table, failure = None, str(err)
    if table is not None and table.num_rows == 0:
        raise _empty(path)
    if table is None or not _valid(table, fields):
        # Raised outside the except block so the user's error carries no pyarrow context.
        _locate_jsonl_error(path, fields)
        raise RaydrError(f"{path}: cannot read as JSON lines ({failure})")
    return table


def _valid(table: pa.Table, fields: dict[str, bool]) -> bool:
    ids = table["_id"]
    return not (
        any(table[name].null_count for name, required in fields.items() if required)
        or pc.any(pc.equal(ids, "")).as_py()
        or pc.count_distinct(ids).as_py() != len(ids)
    )


def _read_qrels(path: Path) -> pa.Table:
    lines = _lines(path)
    header = next(lines, (1, ""))[1].rstrip("\r\n")
    lines.close()
    if header.split("\t") != _BEIR_HEADER:
        raise RaydrError(
            f"{path}: line 1: expected the BEIR header 'query-id<TAB>corpus-id<TAB>score', "
            f"got {header[:80]!r}"
        )
    table, failure = None, ""
    try:
        table = pcsv.read_csv(
            path,
            parse_options=pcsv.ParseOptions(delimiter="\t", quote_char=False),
            convert_options=pcsv.ConvertOptions(
                column_types=dict(zip(_BEIR_HEADER, QRELS.types, strict=True)),
                null_values=[],  # otherwise a score of "NA" or "" silently becomes null
            ),
        )
    except (pa.ArrowException, OSError) as err:
        failure = str(err)
    if table is None:
        _locate_tsv_error(path)  # outside the except block: no pyarrow context on the error
        raise RaydrError(f"{path}: cannot read as TSV ({failure})")
    return pa.table(table.columns, schema=QRELS)


def _drop_duplicates(table: pa.Table, path: Path, warnings: list[str]) -> tuple[pa.Table, int]:
    """Keep the first row of each (query_id, doc_id) pair."""
    rows = table.append_column("_row", pa.array(range(table.num_rows), pa.int64()))
    first = rows.group_by(["query_id", "doc_id"], use_threads=False).aggregate([("_row", "min")])
    dropped = table.num_rows - first.num_rows
    if dropped:
        keep = pc.is_in(rows["_row"], value_set=first["_row_min"].combine_chunks())
        dups = table.filter(pc.invert(keep)).slice(0, _EXAMPLES).select(["query_id", "doc_id"])
        pairs = ", ".join(f"({q}, {d})" for q, d in zip(*dups.to_pydict().values(), strict=True))
        _warn(warnings, f"{path}: dropped {dropped} duplicate (query, doc) row(s), e.g. {pairs}")
        table = table.filter(keep)
    return table, dropped


def _drop_unknown(
    table: pa.Table,
    path: Path,
    corpus: pa.Table,
    queries: pa.Table,
    strict: bool,
    warnings: list[str],
) -> tuple[pa.Table, int]:
    """Drop (or with ``strict`` reject) rows whose query or doc id is not in the dataset."""
    known_q = pc.is_in(table["query_id"], value_set=queries["query_id"].combine_chunks())
    known_d = pc.is_in(table["doc_id"], value_set=corpus["doc_id"].combine_chunks())
    keep = pc.and_(known_q, known_d)
    kept = table.filter(keep)
    dropped = table.num_rows - kept.num_rows
    if not dropped:
        return table, 0
    bad_q = table.filter(pc.invert(known_q))["query_id"].unique()
    bad_d = table.filter(pc.invert(known_d))["doc_id"].unique()
    if strict:
        i = pc.index(keep, False).as_py()
        column, kind = ("doc_id", "doc id") if known_q[i].as_py() else ("query_id", "query id")
        value = table[column][i].as_py()
        line = _line_of(path, QRELS.names.index(column), value)
        raise RaydrError(f"{path}: line {line}: unknown {kind} {value!r} (strict mode)")
    _warn(
        warnings,
        f"{path}: dropped {dropped} of {table.num_rows} row(s) naming ids not in the dataset"
        f" ({len(bad_q)} unknown query id(s), e.g. {bad_q[:_EXAMPLES].to_pylist()};"
        f" {len(bad_d)} unknown doc id(s), e.g. {bad_d[:_EXAMPLES].to_pylist()})",
    )
    return kept, dropped


def _warn(warnings: list[str], message: str) -> None:
    log.warning("%s", message)
    warnings.append(message)


# --- slow path: name the first bad line -----------------------------------------------------


def _locate_jsonl_error(path: Path, fields: dict[str, bool]) -> None:
    """Raise a ``RaydrError`` for the first bad line of ``path``; return if none is found."""
    seen: dict[str, int] = {}
    for n, line in _lines(path):
        if not line.strip():
            continue  # blank lines are tolerated, as pyarrow does
        try:
            obj = json.loads(line.rstrip("\r\n"))  # so the error column is on this line
        except json.JSONDecodeError as err:
            raise RaydrError(
                f"{path}: line {n}: malformed JSON ({err.msg}, column {err.colno})"
            ) from None
        if not isinstance(obj, dict):
            raise RaydrError(f"{path}: line {n}: expected a JSON object, got {_json_type(obj)}")
        for name, required in fields.items():
            value = obj.get(name)
            if value is None and required:
                problem = "is null" if name in obj else "is missing"
                raise RaydrError(f"{path}: line {n}: field {name!r} {problem} (expected a string)")
            if value is not None and not isinstance(value, str):
                raise RaydrError(
                    f"{path}: line {n}: field {name!r}: expected a string, "
                    f"got {_json_type(value)} {json.dumps(value)[:40]}"
                )
        key = obj["_id"]
        if not key:
            raise RaydrError(
                f"{path}: line {n}: field '_id' is empty (expected a non-empty string)"
            )
        if key in seen:
            raise RaydrError(f"{path}: line {n}: duplicate _id {key!r} (first on line {seen[key]})")
        seen[key] = n
    if not seen:
        raise _empty(path)


def _locate_tsv_error(path: Path) -> None:
    """Raise a ``RaydrError`` for the first bad data line of a qrels TSV; return if none."""
    for n, line in _lines(path):
        line = line.rstrip("\r\n")
        if n == 1 or not line:
            continue
        fields = line.split("\t")
        if len(fields) != 3:
            raise RaydrError(
                f"{path}: line {n}: expected 3 tab-separated fields (query-id, corpus-id, score),"
                f" got {len(fields)}"
            )
        score = fields[2]
        if not _INT.fullmatch(score) or not -(2**31) <= int(score) < 2**31:
            raise RaydrError(
                f"{path}: line {n}: field 'score': expected an int32, got {score[:40]!r}"
            )


def _line_of(path: Path, column: int, value: str) -> int:
    """Line number of the first qrels data row whose ``column`` equals ``value``."""
    for n, line in _lines(path):
        fields = line.rstrip("\r\n").split("\t")
        if n > 1 and len(fields) == 3 and fields[column] == value:
            return n
    return 0  # not reached: value came from this file


def _json_type(value: object) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number"}
    return names.get(type(value), "number" if isinstance(value, float) else type(value).__name__)


def _empty(path: Path) -> RaydrError:
    return RaydrError(f"{path}: no records (expected one JSON object per line)")
