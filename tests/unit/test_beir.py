"""BEIR import (raydr.data.beir) and the readers of an imported dataset (raydr.data.tables)."""

from __future__ import annotations

import gzip
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raydr.data import tables
from raydr.data.beir import import_beir
from raydr.errors import RaydrError

SCIFACT = Path(__file__).resolve().parents[3] / "shared/data/scifact"

DOCS = [
    {"_id": "d1", "title": "Alpha", "text": "The first document.", "metadata": {}},
    {"_id": "d2", "text": 'No title — ünïcödé 日本語 😀 "quoted"\ttab', "metadata": {"url": "u"}},
    {"_id": "d3", "title": "Γάμμα", "text": "", "metadata": {"a": [1, {"b": None}]}},
    {"_id": "0042", "title": None, "text": "leading zeros stay"},
]
QUERIES = [
    {"_id": "q1", "text": "what is alpha?", "metadata": {}},
    {"_id": "q2", "text": "ещё один вопрос"},
    {"_id": "q3", "text": "a query without qrels"},
]
QRELS = {
    "test": [("q1", "d1", 1), ("q2", "d2", 2), ("q2", "0042", 0)],
    "train": [("q1", "d3", 1)],
}
HEADER = "query-id\tcorpus-id\tscore\n"


def _jsonl(rows: list[dict[str, Any]]) -> bytes:
    # Blank lines and CRLF endings occur in the wild; both must be tolerated.
    body = "\r\n".join(json.dumps(row, ensure_ascii=False) for row in rows)
    return f"\n{body}\n\n".encode()


def _tsv(rows: list[tuple[str, str, int]]) -> bytes:
    return (HEADER + "".join(f"{q}\t{d}\t{s}\n" for q, d, s in rows)).encode()


def make_beir(root: Path, *, gz: bool = False, **files: bytes) -> Path:
    """Write a BEIR dir; ``files`` overrides contents by name (``qrels_test`` = qrels/test.tsv)."""
    contents = {
        "corpus.jsonl": _jsonl(DOCS),
        "queries.jsonl": _jsonl(QUERIES),
        **{f"qrels/{split}.tsv": _tsv(rows) for split, rows in QRELS.items()},
    }
    contents.update({_name(name): data for name, data in files.items()})
    for name, data in contents.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if gz:
            path, data = path.with_name(path.name + ".gz"), gzip.compress(data)
        path.write_bytes(data)
    return root


def _name(key: str) -> str:
    return f"qrels/{key.removeprefix('qrels_')}.tsv" if key.startswith("qrels_") else key


def _error(fn: Callable[[], object]) -> str:
    """Run ``fn``, expect one clean RaydrError (no pyarrow exception chained), return its text."""
    with pytest.raises(RaydrError) as info:
        fn()
    err = info.value
    assert err.__cause__ is None
    assert err.__context__ is None or err.__suppress_context__
    return str(err)


@pytest.fixture(params=[False, True], ids=["plain", "gz"])
def gz(request: pytest.FixtureRequest) -> bool:
    return request.param


def test_round_trip(tmp_path: Path, gz: bool) -> None:
    src, out = make_beir(tmp_path / "beir", gz=gz), tmp_path / "out"
    report = import_beir(src, out)

    assert report["docs"] == len(DOCS) and report["queries"] == len(QUERIES)
    assert report["splits"]["test"] == {
        "queries": 2,
        "rows": 3,
        "dropped_duplicate": 0,
        "dropped_unknown": 0,
    }
    assert report["dropped_qrels"] == 0 and report["warnings"] == []
    corpus = tables.load_corpus(out).to_pylist()
    assert corpus == [
        {"doc_id": d["_id"], "title": d.get("title") or "", "text": d["text"]} for d in DOCS
    ]
    queries = tables.load_queries(out).to_pylist()
    assert queries == [{"query_id": q["_id"], "text": q["text"]} for q in QUERIES]
    assert tables.splits(out) == ["test", "train"]
    for split, rows in QRELS.items():
        expected: dict[str, dict[str, int]] = {}
        for q, d, s in rows:
            expected.setdefault(q, {})[d] = s
        assert tables.load_qrels(out, split) == expected
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["schema_version"] == 1 and manifest["source"] == str(src.resolve())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["beir", "out"]


GOOD_DOC = b'{"_id": "d1", "text": "x"}\n'
GOOD_QUERY = b'{"_id": "q1", "text": "x"}\n'
BAD_INPUTS = {
    # name: (file, contents, line, fragments expected in the message)
    "malformed-json": (
        "corpus.jsonl",
        GOOD_DOC + b'\n{"_id": "d2", "text": \n',
        3,
        ["malformed JSON", "column 23"],
    ),
    "missing-id": (
        "corpus.jsonl",
        GOOD_DOC + b'{"title": "t", "text": "y"}\n',
        2,
        ["field '_id' is missing"],
    ),
    "null-text": (
        "corpus.jsonl",
        GOOD_DOC + b'{"_id": "d2", "text": null}\n',
        2,
        ["field 'text' is null"],
    ),
    "duplicate-id": (
        "corpus.jsonl",
        GOOD_DOC + b'\n{"_id": "d2", "text": "y"}\n{"_id": "d1", "text": "z"}\n',
        4,
        ["duplicate _id 'd1'", "first on line 1"],
    ),
    "empty-id": ("corpus.jsonl", GOOD_DOC + b'{"_id": "", "text": "y"}\n', 2, ["'_id' is empty"]),
    "numeric-id": (
        "queries.jsonl",
        GOOD_QUERY + b'{"_id": 7, "text": "y"}\n',
        2,
        ["field '_id'", "expected a string", "got number"],
    ),
    "text-array": (
        "queries.jsonl",
        GOOD_QUERY + b'\n\n{"_id": "q2", "text": ["a"]}\n',
        4,
        ["field 'text'", "expected a string", "got array"],
    ),
    "not-an-object": ("corpus.jsonl", GOOD_DOC + b"[1, 2]\n", 2, ["expected a JSON object"]),
    "non-utf8-json": (
        "corpus.jsonl",
        GOOD_DOC + b'{"_id": "d2", "text": "caf\xe9"}\n',
        2,
        ["not valid UTF-8"],
    ),
    "score-float": (
        "qrels_test",
        _tsv([("q1", "d1", 1)]) + b"\nq2\td2\t1.5\n",
        4,
        ["field 'score'", "expected an int32", "'1.5'"],
    ),
    "score-NA": ("qrels_test", _tsv([("q1", "d1", 1)]) + b"q2\td2\tNA\n", 3, ["'NA'"]),
    "score-missing": ("qrels_test", _tsv([]) + b"q1\td1\n", 2, ["expected 3 tab-separated"]),
    "non-utf8-tsv": ("qrels_test", _tsv([]) + b"q1\td\xff\t1\n", 2, ["not valid UTF-8"]),
    "bad-header": ("qrels_test", b"qid\tdocid\trel\nq1\td1\t1\n", 1, ["BEIR header"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_names_file_and_line(tmp_path: Path, gz: bool, case: str) -> None:
    name, data, line, fragments = BAD_INPUTS[case]
    src, out = make_beir(tmp_path / "beir", gz=gz, **{name: data}), tmp_path / "out"
    message = _error(lambda: import_beir(src, out))
    assert Path(_name(name)).name in message
    assert f"line {line}:" in message
    for fragment in fragments:
        assert fragment in message
    # Nothing half-written: no out dir and no temp dir beside it.
    assert [p.name for p in tmp_path.iterdir()] == ["beir"]


@pytest.mark.parametrize("data", [b"", b"\n \n"], ids=["empty", "blank"])
def test_empty_corpus(tmp_path: Path, gz: bool, data: bytes) -> None:
    src = make_beir(tmp_path / "beir", gz=gz, **{"corpus.jsonl": data})
    message = _error(lambda: import_beir(src, tmp_path / "out"))
    assert "corpus.jsonl" in message and "no records" in message


def test_truncated_gzip(tmp_path: Path) -> None:
    docs = [{"_id": f"d{i}", "text": f"document number {i} " * (i % 7)} for i in range(20000)]
    src = make_beir(tmp_path / "beir", gz=True, **{"corpus.jsonl": _jsonl(docs)})
    path = src / "corpus.jsonl.gz"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    message = _error(lambda: import_beir(src, tmp_path / "out"))
    assert "corpus.jsonl.gz: line " in message


@pytest.mark.parametrize(
    ("remove", "expected"),
    [
        ("corpus.jsonl", "no corpus.jsonl or corpus.jsonl.gz"),
        ("queries.jsonl", "no queries.jsonl or queries.jsonl.gz"),
        ("qrels", "qrels/<split>.tsv"),
    ],
)
def test_missing_files(tmp_path: Path, remove: str, expected: str) -> None:
    src = make_beir(tmp_path / "beir")
    path = src / remove
    if path.is_dir():
        for child in path.iterdir():
            child.unlink()
    else:
        path.unlink()
    message = _error(lambda: import_beir(src, tmp_path / "out"))
    assert str(src) in message and expected in message
    assert not (tmp_path / "out").exists()


def test_not_a_directory(tmp_path: Path) -> None:
    assert "not a directory" in _error(lambda: import_beir(tmp_path / "nope", tmp_path / "out"))


def test_plain_and_gz_both_present(tmp_path: Path) -> None:
    src = make_beir(tmp_path / "beir")
    (src / "corpus.jsonl.gz").write_bytes(gzip.compress(_jsonl(DOCS)))
    assert "keep one" in _error(lambda: import_beir(src, tmp_path / "out"))


def test_unknown_ids_are_dropped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rows = [*QRELS["test"], ("q9", "d1", 1), ("q1", "d9", 1), ("q1", "d1", 2)]
    src = make_beir(tmp_path / "beir", qrels_test=_tsv(rows))
    with caplog.at_level(logging.WARNING):
        report = import_beir(src, tmp_path / "out")
    test = report["splits"]["test"]
    assert (test["rows"], test["dropped_unknown"], test["dropped_duplicate"]) == (3, 2, 1)
    assert report["dropped_qrels"] == 3
    unknown = next(w for w in report["warnings"] if "not in the dataset" in w)
    assert "test.tsv" in unknown and "'q9'" in unknown and "'d9'" in unknown
    assert any("duplicate" in w and "(q1, d1)" in w for w in report["warnings"])
    assert len(caplog.records) == 2
    # The first of a duplicated pair wins.
    assert tables.load_qrels(tmp_path / "out", "test")["q1"] == {"d1": 1}


def test_unknown_ids_strict(tmp_path: Path, gz: bool) -> None:
    body = _tsv([("q1", "d1", 1)]) + b"\n" + _tsv([("q1", "d9", 1)]).split(b"\n", 1)[1]
    src = make_beir(tmp_path / "beir", gz=gz, qrels_test=body)
    message = _error(lambda: import_beir(src, tmp_path / "out", strict=True))
    assert "test.tsv" in message and "line 4: unknown doc id 'd9'" in message
    assert [p.name for p in tmp_path.iterdir()] == ["beir"]


def test_overwrite(tmp_path: Path) -> None:
    src, out = make_beir(tmp_path / "beir"), tmp_path / "out"
    import_beir(src, out)
    assert "already exists" in _error(lambda: import_beir(src, out))

    (src / "queries.jsonl").write_bytes(_jsonl(QUERIES[:2]))
    import_beir(src, out, overwrite=True)
    assert tables.load_queries(out).num_rows == 2

    # A failed overwrite keeps the previous import whole.
    (src / "corpus.jsonl").write_bytes(b"{oops\n")
    assert "line 1:" in _error(lambda: import_beir(src, out, overwrite=True))
    assert tables.load_corpus(out).num_rows == len(DOCS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["beir", "out"]


def test_tables_reject_non_datasets(tmp_path: Path) -> None:
    raw = make_beir(tmp_path / "beir")
    message = _error(lambda: tables.load_corpus(raw))
    assert "raw BEIR" in message and "raydr import-beir" in message
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "not an imported raydr dataset" in _error(lambda: tables.splits(empty))


def test_tables_unknown_split(tmp_path: Path) -> None:
    out = tmp_path / "out"
    import_beir(make_beir(tmp_path / "beir"), out)
    message = _error(lambda: tables.load_qrels(out, "dev"))
    assert "'dev'" in message and "test, train" in message


def test_tables_schema_mismatch(tmp_path: Path) -> None:
    out = tmp_path / "out"
    import_beir(make_beir(tmp_path / "beir"), out)
    pq.write_table(pa.table({"doc_id": [1], "title": [""], "text": ["x"]}), out / "corpus.parquet")
    message = _error(lambda: tables.load_corpus(out))
    assert "corpus.parquet" in message and "'doc_id'" in message and "expected string" in message
    pq.write_table(pa.table({"query_id": ["q1"]}), out / "queries.parquet")
    message = _error(lambda: tables.load_queries(out))
    assert "queries.parquet" in message and "missing column 'text'" in message


@pytest.mark.skipif(not SCIFACT.is_dir(), reason=f"{SCIFACT} is absent")
def test_scifact(tmp_path: Path) -> None:
    report = import_beir(SCIFACT, tmp_path / "scifact")
    assert (report["docs"], report["queries"], report["warnings"]) == (5183, 1109, [])
    assert report["splits"]["test"]["queries"] == 300 and report["splits"]["test"]["rows"] == 339
    assert report["splits"]["train"]["queries"] == 809 and report["splits"]["train"]["rows"] == 919
    qrels = tables.load_qrels(tmp_path / "scifact", "test")
    assert len(qrels) == 300 and sum(map(len, qrels.values())) == 339


def test_dev_split_is_carved_from_train_seeded_and_recorded(
    tmp_path: Path, tiny_beir: Path
) -> None:
    from raydr.config import BM25Config
    from raydr.data.groups import build_rows
    from raydr.mining.bm25_negatives import mine_bm25_negatives

    out = tmp_path / "a"
    report = import_beir(tiny_beir, out, dev_from="test", dev_queries=2, dev_seed=1)
    dev, rest = tables.load_qrels(out, "dev"), tables.load_qrels(out, "test")
    assert len(dev) == 2 and len(rest) == 3 and not set(dev) & set(rest)
    assert set(dev) | set(rest) == {f"q{i}" for i in range(5)}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["splits"]["dev"] == report["splits"]["dev"]
    assert manifest["splits"]["dev"]["carved_from"] == "test"
    assert manifest["splits"]["dev"]["seed"] == 1
    assert manifest["splits"]["test"]["queries"] == 3
    # Deterministic: the same seed carves the same queries; another seed, others.
    import_beir(tiny_beir, tmp_path / "b", dev_from="test", dev_queries=2, dev_seed=1)
    assert tables.load_qrels(tmp_path / "b", "dev") == dev
    for seed in range(2, 6):
        import_beir(tiny_beir, tmp_path / f"s{seed}", dev_from="test", dev_queries=2, dev_seed=seed)
    assert any(tables.load_qrels(tmp_path / f"s{seed}", "dev") != dev for seed in range(2, 6))
    # Training rows and mined negatives come from the remaining queries only.
    assert not {r.query_id for r in build_rows(out, "test")} & set(dev)
    mine_bm25_negatives(out, "test", tmp_path / "neg.parquet", 3, BM25Config())
    mined = pq.read_table(tmp_path / "neg.parquet")["query_id"].to_pylist()
    assert set(mined) == set(rest)


def test_dev_split_bad_input(tmp_path: Path, tiny_beir: Path) -> None:
    message = _error(lambda: import_beir(tiny_beir, tmp_path / "o", dev_from="train"))
    assert "--dev-from train" in message and "available: test" in message
    message = _error(lambda: import_beir(tiny_beir, tmp_path / "o", dev_from="test", dev_queries=5))
    assert "5 queries to carve, but the split has 5; expected 1 to 4" in message
    src = make_beir(tmp_path / "beir", qrels_dev=_tsv([("q1", "d1", 1)]))
    message = _error(lambda: import_beir(src, tmp_path / "o", dev_from="train"))
    assert "already is a 'dev' split" in message
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(not SCIFACT.is_dir(), reason=f"{SCIFACT} is absent")
def test_scifact_with_a_dev_split(tmp_path: Path) -> None:
    report = import_beir(SCIFACT, tmp_path / "scifact", dev_from="train", dev_queries=200)
    assert report["splits"]["dev"]["queries"] == 200
    assert report["splits"]["train"]["queries"] == 609
    assert report["splits"]["test"]["queries"] == 300
