"""Static hard negatives: BM25 top-k per training query, judged documents excluded."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raydr.atomic import atomic_path
from raydr.config import BM25Config
from raydr.data.groups import NEGATIVES
from raydr.errors import RaydrError


def mine_bm25_negatives(
    data_dir: str | Path,
    split: str,
    out: str | Path,
    depth: int,
    cfg: BM25Config,
    *,
    add: bool = False,
) -> dict[str, int]:
    """Write ``out`` (Parquet: query_id, negatives) and return counts. ``add``: keep the rows
    ``out`` already holds for other queries (a refit adds dev's to training's, which stay as
    they were), the whole in query-id order."""
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
    mined = {"queries": table.num_rows, "min_negatives": min(map(len, negatives))}
    if add:
        table = _added(out, table)
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp)
    return mined | ({"queries_in_file": table.num_rows} if add else {})


def _added(out: str | Path, table: pa.Table) -> pa.Table:
    """``out``'s rows for queries ``table`` lacks, plus ``table``, sorted by query id."""
    from raydr.data.groups import load_negatives

    if not Path(out).is_file():
        raise RaydrError(
            f"{out}: no negatives to add to; mine the training split's first "
            "(`raydr mine-negatives CONFIG`)"
        )
    fresh = set(table["query_id"].to_pylist())
    kept = {q: n for q, n in load_negatives(out).items() if q not in fresh}
    both = pa.concat_tables([pa.table([list(kept), list(kept.values())], schema=NEGATIVES), table])
    return both.take(pc.sort_indices(both, [("query_id", "ascending")]))
