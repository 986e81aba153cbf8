"""One evaluation split: the judged queries of a qrels split and the corpus they search."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raydr.errors import RaydrError

DEV = "dev"  # the split carved out of training queries for model selection


@dataclass
class Split:
    """Queries judged in one qrels split, in id order, over the whole corpus (or a subset)."""

    doc_ids: list[str]
    passages: list[str]
    query_ids: list[str]
    queries: list[str]
    qrels: dict[str, dict[str, int]]

    def restrict(self, doc_ids: list[str]) -> Split:
        """The same queries over only ``doc_ids`` (kept in corpus order)."""
        keep = set(doc_ids)
        unknown = keep.difference(self.doc_ids)
        if unknown:
            raise RaydrError(
                f"subset names {len(unknown)} doc ids not in the corpus, e.g. {sorted(unknown)[:3]}"
            )
        rows = [i for i, d in enumerate(self.doc_ids) if d in keep]
        return Split(
            doc_ids=[self.doc_ids[i] for i in rows],
            passages=[self.passages[i] for i in rows],
            query_ids=self.query_ids,
            queries=self.queries,
            qrels=self.qrels,
        )

    def limit_queries(self, n: int | None) -> Split:
        """The first ``n`` queries in id order (all when ``n`` is None)."""
        if n is None or n >= len(self.query_ids):
            return self
        ids = self.query_ids[:n]
        return Split(
            self.doc_ids, self.passages, ids, self.queries[:n], {q: self.qrels[q] for q in ids}
        )


def load_split(data_dir: str | Path, split: str) -> Split:
    """Queries are those judged in ``split``, in id order; the corpus is whole."""
    from raydr.data.tables import load_corpus
    from raydr.data.text import passage_texts

    corpus = load_corpus(data_dir)
    return Split(
        doc_ids=corpus.column("doc_id").to_pylist(),
        passages=passage_texts(corpus),
        **split_queries(data_dir, split),
    )


def split_queries(data_dir: str | Path, split: str) -> dict:
    """The judged queries of ``split`` in id order, without the corpus: ``query_ids``,
    ``queries`` (texts) and ``qrels``."""
    from raydr.data.tables import load_qrels, load_queries

    qrels = load_qrels(data_dir, split)
    queries = load_queries(data_dir)
    text_of = dict(
        zip(queries.column("query_id").to_pylist(), queries.column("text").to_pylist(), strict=True)
    )
    query_ids = sorted(q for q in qrels if q in text_of)
    return {
        "query_ids": query_ids,
        "queries": [text_of[q] for q in query_ids],
        "qrels": {q: qrels[q] for q in query_ids},
    }


def carve_queries(qrels: pa.Table, n: int, seed: int, what: str) -> tuple[pa.Table, pa.Table]:
    """Split a qrels table by query: ``n`` queries drawn with ``seed`` (a pure function of the
    sorted query ids, so a re-import gives the same split) → (the rest, the carved ones)."""
    ids = sorted(set(qrels["query_id"].to_pylist()))
    if not 0 < n < len(ids):
        raise RaydrError(
            f"{what}: {n} queries to carve, but the split has {len(ids)}; expected 1 to {len(ids) - 1}"
        )
    picked = pa.array(
        [ids[i] for i in np.random.default_rng(seed).choice(len(ids), n, replace=False)]
    )
    inside = pc.is_in(qrels["query_id"], value_set=picked)
    return qrels.filter(pc.invert(inside)), qrels.filter(inside)
