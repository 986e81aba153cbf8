"""Static hard negatives: BM25 top-k per training query, judged documents excluded."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from raydr.atomic import atomic_path
from raydr.config import BM25Config
from raydr.data.groups import NEGATIVES


def mine_bm25_negatives(
    data_dir: str | Path, split: str, out: str | Path, depth: int, cfg: BM25Config
) -> dict[str, int]:
    """Write ``out`` (Parquet: query_id, negatives) and return counts."""
    from raydr.data.split import load_split
    from raydr.retrieval.bm25 import BM25

    split_data = load_split(data_dir, split)
    index = BM25(split_data.passages, cfg)
    # Ask for a few extra so that dropping judged docs still leaves ``depth``.
    extra = max(len(v) for v in split_data.qrels.values())
    _, pos = index.search(split_data.queries, depth + extra)
    negatives = []
    for qid, row in zip(split_data.query_ids, pos, strict=True):
        judged = split_data.qrels[qid]
        docs = [split_data.doc_ids[p] for p in row if p >= 0]
        negatives.append([d for d in docs if d not in judged and d != qid][:depth])
    table = pa.table([split_data.query_ids, negatives], schema=NEGATIVES)
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp)
    return {"queries": table.num_rows, "min_negatives": min(map(len, negatives))}
