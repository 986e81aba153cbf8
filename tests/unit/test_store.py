"""The memory-mapped training data: the same rows and passages the tables give, built once."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raydr.data import store
from raydr.data.groups import NEGATIVES, build_rows, load_negatives, sample_group
from raydr.data.tables import load_corpus
from raydr.data.text import passage_texts
from raydr.errors import RaydrError


@pytest.fixture
def dataset(tiny_dataset: Path, tmp_path: Path) -> Path:
    """A private copy: these tests rewrite its files."""
    return Path(shutil.copytree(tiny_dataset, tmp_path / "data"))


def test_passages_are_in_doc_id_order_and_read_back_as_the_table_gives_them(
    dataset: Path, negatives: Path
) -> None:
    data = store.ensure(dataset, "test", negatives)
    passages = store.PassageStore(data.passages)
    corpus = load_corpus(dataset)
    text = dict(zip(corpus["doc_id"].to_pylist(), passage_texts(corpus), strict=True))
    ids = sorted(text)  # the loop's integer doc index has always been the sorted position
    assert len(passages) == len(ids)
    assert passages.positions(ids).tolist() == list(range(len(ids)))
    shuffled = np.random.default_rng(0).permutation(len(ids))
    assert passages.texts(shuffled) == [text[ids[i]] for i in shuffled]
    assert [passages.doc_id(i) for i in shuffled[:5]] == [ids[i] for i in shuffled[:5]]
    assert passages.positions(["nope", ids[3]], missing=-1).tolist() == [-1, 3]
    with pytest.raises(RaydrError, match="doc 'nope' is not in the corpus"):
        passages.positions(["nope"])


def test_rows_name_the_same_docs_and_draw_the_same_groups_as_build_rows(
    dataset: Path, negatives: Path
) -> None:
    data = store.ensure(dataset, "test", negatives)
    rows, passages = store.RowStore(data.rows), store.PassageStore(data.passages)
    want = build_rows(dataset, "test", load_negatives(negatives))
    assert len(rows) == len(want)
    for j, old in enumerate(want):
        row = rows[j]
        assert (row.query_id, row.query) == (old.query_id, old.query)
        assert [passages.doc_id(p) for p in row.positives] == list(old.positives)
        assert [passages.doc_id(p) for p in row.negatives] == list(old.negatives)
        # Positions are ranks of sorted ids, so seeded sampling draws the very same docs.
        for epoch in range(3):
            got = sample_group(row, j, epoch, 0, 4)
            assert [passages.doc_id(p) for p in got] == sample_group(old, j, epoch, 0, 4)


def test_built_once_then_rebuilt_when_the_source_changes(dataset: Path, negatives: Path) -> None:
    first = store.ensure(dataset, "test", negatives)
    stamp = Path(first.passages, "keys.npy").stat().st_mtime_ns
    assert store.ensure(dataset, "test", negatives) == first  # nothing rebuilt
    assert Path(first.passages, "keys.npy").stat().st_mtime_ns == stamp
    # A re-import rewrites corpus.parquet: a new store replaces the stale one.
    corpus = load_corpus(dataset)
    extra = pa.table(
        {"doc_id": ["zz-new"], "title": [""], "text": ["cell gene"]}, schema=corpus.schema
    )
    pq.write_table(pa.concat_tables([corpus, extra]), dataset / "corpus.parquet")
    second = store.ensure(dataset, "test", negatives)
    assert second.passages != first.passages and not Path(first.passages).exists()
    assert second.rows != first.rows and not Path(first.rows).exists()
    assert len(store.PassageStore(second.passages)) == corpus.num_rows + 1


def test_the_store_is_built_batch_by_batch_across_row_groups(dataset: Path, monkeypatch) -> None:
    corpus = load_corpus(dataset)
    shuffled = corpus.take(np.random.default_rng(2).permutation(corpus.num_rows))
    # Row groups of 5 against record batches of 7: every slice boundary falls mid-group.
    pq.write_table(shuffled, dataset / "corpus.parquet", row_group_size=5)
    monkeypatch.setattr(store, "_BATCH", 7)
    passages = store.PassageStore(store.ensure_passages(dataset))
    text = dict(zip(corpus["doc_id"].to_pylist(), passage_texts(corpus), strict=True))
    ids = sorted(text)
    assert [passages.doc_id(i) for i in range(len(ids))] == ids
    assert passages.texts(range(len(ids))) == [text[d] for d in ids]
    assert passages.positions(ids[::-1]).tolist() == list(range(len(ids)))[::-1]
    assert [p.name for p in Path(passages.folder).iterdir() if p.suffix == ".arrow"] == [
        "passages.arrow"
    ]  # the scratch copy is gone


def test_a_string_column_reads_by_position_across_uneven_batches(tmp_path: Path) -> None:
    words = [f"w{i}" * (i % 4) for i in range(10)]  # "" included
    cuts = [(0, 3), (3, 8), (8, 10)]  # batches of 3, 5 and 2 rows
    path = tmp_path / "uneven.arrow"
    store._write_ipc(
        path,
        store._PASSAGES,
        ([pa.array(words[a:b]), pa.array(words[a:b][::-1])] for a, b in cuts),
    )
    ids = store._Strings(path, 0)
    assert ids.num_rows == 10 and [ids[i] for i in range(10)] == words
    with pytest.raises(IndexError):
        ids[10]


def test_bad_data_is_one_error_naming_the_file(
    dataset: Path, negatives: Path, tmp_path: Path
) -> None:
    corpus = load_corpus(dataset)
    # A doc id twice.
    pq.write_table(pa.concat_tables([corpus, corpus.slice(0, 1)]), dataset / "corpus.parquet")
    with pytest.raises(RaydrError, match=r"corpus.parquet: doc_id '.+' appears twice"):
        store.ensure(dataset, "test", negatives)
    pq.write_table(corpus, dataset / "corpus.parquet")
    # A negative that is not in the corpus.
    bad = tmp_path / "bad-negatives.parquet"
    table = pq.read_table(negatives)
    lists = table["negatives"].to_pylist()
    lists[0] = ["not-a-doc", *lists[0][1:]]
    pq.write_table(pa.table([table["query_id"], lists], schema=NEGATIVES), bad)
    with pytest.raises(RaydrError, match=r"bad-negatives.parquet: query '.+' has negative 'not-a"):
        store.ensure(dataset, "test", bad)


def test_a_judged_doc_missing_from_the_corpus_stays_out_of_the_groups(
    dataset: Path, negatives: Path
) -> None:
    # BEIR qrels can judge docs the corpus lacks: drop one query's first positive from the
    # corpus; the row keeps the other, and a query left with none is an error naming it.
    rows = build_rows(dataset, "test", load_negatives(negatives))
    two = next(r for r in rows if len(r.positives) == 2)
    corpus = load_corpus(dataset)
    keep = pa.array([d != two.positives[0] for d in corpus["doc_id"].to_pylist()])
    pq.write_table(corpus.filter(keep), dataset / "corpus.parquet")
    table = pq.read_table(negatives)  # the mined negatives must still be in the corpus
    lists = [[d for d in n if d != two.positives[0]] for n in table["negatives"].to_pylist()]
    clean = dataset / "negatives.parquet"
    pq.write_table(pa.table([table["query_id"], lists], schema=NEGATIVES), clean)
    data = store.ensure(dataset, "test", clean)
    got = {r.query_id: r for r in (store.RowStore(data.rows)[j] for j in range(len(rows)))}
    passages = store.PassageStore(data.passages)
    assert [passages.doc_id(p) for p in got[two.query_id].positives] == list(two.positives[1:])
    keep = pa.array([d not in two.positives for d in corpus["doc_id"].to_pylist()])
    pq.write_table(corpus.filter(keep), dataset / "corpus.parquet")
    lists = [[d for d in n if d not in two.positives] for n in table["negatives"].to_pylist()]
    pq.write_table(pa.table([table["query_id"], lists], schema=NEGATIVES), clean)
    with pytest.raises(RaydrError, match=rf"query '{two.query_id}' has no positive in corpus"):
        store.ensure(dataset, "test", clean)


def test_a_refresh_encodes_the_store_chunk_by_chunk_into_each_passages_own_row(
    dataset: Path, tmp_path: Path, tiny_model_dir: Path
) -> None:
    from conftest import tiny_tree

    from raydr import config
    from raydr.retrieval.dense import DenseRetriever
    from raydr.training import checkpoint
    from raydr.validation.validator import encode_into

    cfg = config.build(tiny_tree("enc", tmp_path, dataset, tiny_model_dir), "test")
    retriever = DenseRetriever(*checkpoint.load(str(tiny_model_dir), cfg.model), cfg)
    passages = store.PassageStore(store.ensure_passages(dataset))
    n = len(passages)
    positions = np.random.default_rng(1).permutation(n)[: n - 5]  # out of order, some left out
    out = np.full((n, retriever.embed(["x"], "passages").shape[1]), np.nan, dtype=np.float32)
    encode_into(out, retriever, passages, positions, batch_size=4, chunk=7)
    whole = retriever.embed(passages.texts(range(n)), "passages", batch_size=64)
    np.testing.assert_allclose(out[positions], whole[positions], atol=1e-5)
    untouched = np.setdiff1d(np.arange(n), positions)
    assert np.isnan(out[untouched]).all()
