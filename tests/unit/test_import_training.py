"""``raydr import-training``: Tevatron JSON lines, sentence-transformers columns (JSON lines,
Parquet, a real ``datasets`` save_to_disk folder) → the same tables ``import-beir`` writes plus
``training.negatives``. A BEIR dataset exported to Tevatron and imported back trains on the
same rows and scores the same; every malformed record is one line naming file, line and
field."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import SCIFACT, tiny_tree

from raydr import config
from raydr.cli import main
from raydr.config import BM25Config
from raydr.data import store
from raydr.data.beir import import_beir
from raydr.data.groups import load_negatives
from raydr.data.tables import load_corpus, load_qrels, load_queries
from raydr.data.training_import import import_training
from raydr.errors import RaydrError
from raydr.mining.bm25_negatives import mine_bm25_negatives


def export_tevatron(data: Path, split: str, negatives: Path, out: Path) -> Path:
    """A raydr dataset's ``split`` as Tevatron training JSON lines: one record per judged
    query, its positives and its mined negatives as {docid, title, text}."""
    corpus = load_corpus(data).to_pylist()
    docs = {
        d["doc_id"]: {"docid": d["doc_id"], "title": d["title"], "text": d["text"]} for d in corpus
    }
    queries = dict(zip(*load_queries(data).to_pydict().values(), strict=True))
    negs = load_negatives(negatives)
    with open(out, "w", encoding="utf-8") as fh:
        for qid, judged in sorted(load_qrels(data, split).items()):
            record = {
                "query_id": qid,
                "query": queries[qid],
                "positive_passages": [docs[d] for d, rel in sorted(judged.items()) if rel > 0],
                "negative_passages": [docs[d] for d in negs.get(qid, [])],
            }
            fh.write(json.dumps(record) + "\n")
    return out


def _round_trip(src: Path, split: str, dev: int, tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    """(BEIR import, its negatives, Tevatron import, its negatives): the BEIR folder imported with
    ``dev`` queries carved from ``split`` and BM25 negatives mined for the rest, then exported
    to Tevatron (with the corpus file beside) and imported back with the same carving."""
    beir = tmp_path / "beir"
    import_beir(src, beir, dev_from=split, dev_queries=dev)
    mined = tmp_path / "mined.parquet"
    mine_bm25_negatives(beir, split, mined, depth=5, cfg=BM25Config())
    # The dev queries' records go into the file too: carving takes the same ones back out.
    records = export_tevatron(beir, f"{split}+dev", mined, tmp_path / "train.jsonl")
    corpus = next(src.glob("corpus.jsonl*"))
    back = tmp_path / "tevatron"
    args = ["--corpus", str(corpus), "--dev-queries", str(dev), "-q"]
    assert main(["import-training", str(records), str(back), *args]) == 0
    return beir, mined, back, back / "negatives.parquet"


def _rows(data: Path, split: str, negatives: Path) -> list:
    built = store.ensure(data, split, negatives)
    rows = store.RowStore(built.rows)
    return [rows[j] for j in range(len(rows))]


@pytest.mark.parametrize("collection", ["tiny", "scifact"])
def test_a_beir_dataset_through_tevatron_trains_on_the_same_rows_and_scores_the_same(
    collection: str, tiny_beir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    if collection == "scifact" and not SCIFACT.is_dir():
        pytest.skip(f"{SCIFACT} is absent")
    src, split, dev = (tiny_beir, "test", 2) if collection == "tiny" else (SCIFACT, "train", 200)
    beir, mined, back, negatives = _round_trip(src, split, dev, tmp_path)
    assert load_corpus(back).equals(load_corpus(beir).sort_by("doc_id"))
    assert load_qrels(back, "dev") == load_qrels(beir, "dev")
    assert load_qrels(back, "train") == load_qrels(beir, split)
    # The training rows (queries, positives and negatives as store positions) are identical,
    # and the loop is a pure function of them and the seed: the same training.
    assert _rows(back, "train", negatives) == _rows(beir, split, mined)
    if collection == "scifact":
        return  # encoding 5,183 docs with even the tiny model is not a unit test's job
    from raydr.evaluate import evaluate

    scores = []
    for data in (beir, back):
        tree = tiny_tree("rt", tmp_path / data.name, data, tiny_model_dir)
        cfg = config.build({**tree, "data": {"path": str(data), "split": "dev"}}, "t")
        scores.append(evaluate(cfg, progress=False).metrics)
    assert scores[0] == scores[1]


def _st_rows() -> list[dict[str, str]]:
    """sentence-transformers triplets: one anchor three times (two positives, and one of them
    as a negative of the other), a positive shared with another query as its negative."""
    return [
        {
            "anchor": "what do cells make",
            "positive": "cells make protein",
            "negative": "stars shine",
        },
        {
            "anchor": "what do cells make",
            "positive": "genes code enzymes",
            "negative": "rock melts",
        },
        {
            "anchor": "what do cells make",
            "positive": "cells make protein",
            "negative": "genes code enzymes",
        },
        {
            "anchor": "where are comets",
            "positive": "comets orbit the sun",
            "negative": "cells make protein",
        },
    ]


def _write_st(kind: str, tmp_path: Path) -> Path:
    rows = _st_rows()
    if kind == "jsonl":
        path = tmp_path / "st.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return path
    if kind == "parquet":
        path = tmp_path / "st.parquet"
        pq.write_table(pa.Table.from_pylist(rows), path)
        return path
    import datasets

    folder = tmp_path / kind
    data = datasets.Dataset.from_list(rows)
    (datasets.DatasetDict({"train": data}) if kind == "datasetdict" else data).save_to_disk(folder)
    return folder


@pytest.mark.parametrize("kind", ["jsonl", "parquet", "datasets", "datasetdict"])
def test_sentence_transformers_triplets_in_every_container_import_alike(
    kind: str, tmp_path: Path
) -> None:
    report = import_training(_write_st(kind, tmp_path), tmp_path / "out")
    out = tmp_path / "out"
    assert (report["records"], report["docs"], report["queries"]) == (4, 5, 2)
    qrels = load_qrels(out, "train")
    docs = dict(zip(*load_corpus(out).select(["doc_id", "text"]).to_pydict().values(), strict=True))
    queries = dict(zip(*load_queries(out).to_pydict().values(), strict=True))
    judged = {queries[q]: sorted(docs[d] for d in ds) for q, ds in qrels.items()}
    assert judged == {
        "what do cells make": ["cells make protein", "genes code enzymes"],
        "where are comets": ["comets orbit the sun"],
    }
    negs = {
        queries[q]: [docs[d] for d in ds] for q, ds in load_negatives(report["negatives"]).items()
    }
    # A judged doc is never its own query's negative; a positive of another query may be.
    assert negs == {
        "what do cells make": ["stars shine", "rock melts"],
        "where are comets": ["cells make protein"],
    }
    if kind == "jsonl":
        return
    reference = tmp_path / "ref"
    import_training(_write_st("jsonl", tmp_path), reference)
    for table in ("corpus.parquet", "queries.parquet", "qrels/train.parquet", "negatives.parquet"):
        assert pq.read_table(out / table).equals(pq.read_table(reference / table)), table


def test_a_tevatron_file_without_ids_is_deduplicated_by_text(tmp_path: Path) -> None:
    p = {"title": "", "text": "shared passage"}
    lines = [
        {"query": "q one", "positive_passages": [p], "negative_passages": [{"text": "n1"}]},
        {
            "query_id": 7,
            "query": "q two",
            "positive_passages": [{"text": "other"}],
            "negative_passages": [p],
        },
        {"query": "q three", "positive_passages": [{"title": "t", "text": "shared passage"}]},
    ]
    src = tmp_path / "t.jsonl.gz"
    import gzip

    with gzip.open(src, "wt") as fh:
        fh.writelines(json.dumps(x) + "\n" for x in lines)
    out = tmp_path / "out"
    report = import_training(src, out, dev_queries=1, test_queries=1)
    # A passage is its title and text: "shared passage" under a title is another doc.
    assert report["docs"] == 4 and report["queries"] == 3
    assert "7" in set(load_queries(out)["query_id"].to_pylist())
    # One query each in test, dev and train, seeded: disjoint, and together all of them.
    parts = [set(load_qrels(out, s)) for s in ("test", "dev", "train")]
    assert [len(x) for x in parts] == [1, 1, 1] and len(set.union(*parts)) == 3
    assert {s: report["splits"][s]["queries"] for s in ("test", "dev", "train")} == dict.fromkeys(
        ("test", "dev", "train"), 1
    )


def _jsonl(path: Path, *records) -> Path:
    """JSON lines of ``records`` (a str is written as it is)."""
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


_GOOD = {"query_id": "a", "query": "q", "positive_passages": [{"docid": "d1", "text": "t"}]}


def _bad_inputs(tmp_path: Path) -> list[tuple[list[str], str]]:
    """(arguments, what the one error line must say)."""
    out = str(tmp_path / "out")
    table = tmp_path / "scored.parquet"
    pq.write_table(pa.table({"s1": ["a"], "s2": ["b"], "label": [0.5]}), table)
    single = tmp_path / "single.parquet"
    pq.write_table(pa.table({"text": ["a"]}), single)
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1 not really")
    (tmp_path / "exists").mkdir()
    no_state = tmp_path / "not-datasets"
    no_state.mkdir()
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps({"title": "x", "text": "no id"}) + "\n")
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset.from_list(_st_rows())}).save_to_disk(
        tmp_path / "dd"
    )
    files = iter(range(100))

    def j(*records) -> str:
        return str(_jsonl(tmp_path / f"bad{next(files)}.jsonl", *records))

    cases = [
        ([str(tmp_path / "missing.jsonl"), out], "missing.jsonl: not found"),
        ([j("{not json"), out], "line 1: not JSON"),
        ([j(_GOOD, "[1, 2]"), out], "line 2: expected a JSON object, got list"),
        ([j({"positive_passages": []}), out], "line 1: field 'query': expected text, got missing"),
        ([j({**_GOOD, "query": [101, 2054]}), out], "pre-tokenised"),
        ([j({**_GOOD, "positive_passages": []}), out], "line 1: field 'positive_passages': empty"),
        ([j({**_GOOD, "positive_passages": [{"docid": "d"}]}), out], "positive_passages[0].text'"),
        (
            [
                j(
                    _GOOD,
                    {**_GOOD, "query_id": "b", "positive_passages": [{"docid": "d1", "text": "u"}]},
                ),
                out,
            ],
            "line 2: docid 'd1' has another text than at",
        ),
        ([j(_GOOD, {**_GOOD, "query": "other"}), out], "line 2: query id 'a' has another text"),
        (
            [j({"anchor": "a", "positive": "p"}, {"anchor": "a", "positive": 3}), out],
            "line 2: field 'positive': expected text, got a int",
        ),
        ([str(table), out], "column 'label' is double, not text"),
        ([str(single), out], "1 column(s) ['text']"),
        ([str(corrupt), out], "corrupt.parquet: unreadable Parquet"),
        ([str(no_state), out], "not a `datasets` folder"),
        ([str(tmp_path / "dd"), out, "--split", "validation"], "without split 'validation'"),
        ([j(_GOOD), str(tmp_path / "exists")], "already exists"),
        ([j(_GOOD), out, "--dev-queries", "1"], "--dev-queries"),
        ([j(_GOOD), out, "--corpus", str(corpus)], "corpus.jsonl: line 1: field '_id'"),
    ]
    return cases


def test_each_bad_input_is_one_line_naming_where_and_exit_2(tmp_path: Path, capsys) -> None:
    cases = _bad_inputs(tmp_path)
    assert len(cases) >= 12
    capsys.readouterr()  # datasets' own progress bars while the inputs were written
    for args, expected in cases:
        assert main(["import-training", *args, "-q"]) == 2, args
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("raydr: error: "), (args, err)
        assert expected in err, (expected, err)
    assert not (tmp_path / "out").exists(), "a failed import left an output behind"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []
    with pytest.raises(RaydrError, match="no training records"):
        import_training(_jsonl(tmp_path / "empty.jsonl", ""), tmp_path / "empty")


def test_bench_import_training_measures_both_importers_and_cleans_up(tmp_path: Path) -> None:
    out, work = tmp_path / "import.json", tmp_path / "work"
    argv = ["bench", "import-training", "--records", "500", "--work", str(work)]
    assert main([*argv, "--out", str(out)]) == 0
    payload = json.loads(out.read_text())
    assert out.with_suffix(".png").stat().st_size > 0
    (row,) = payload["records"]
    assert row["records"] == 500 and payload["machine"]["cpu"]
    for key in ("import_training", "import_beir"):  # the same 500 docs, each measured alone
        assert row[key]["docs"] == 500 and row[key]["peak_rss_mb"] > 0 and row[key]["s"] > 0
    assert not work.exists(), "the generated files were left on disk"
