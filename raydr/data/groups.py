"""Training groups: a query, its positives and its hard negatives, sampled per epoch.

A group is ``1 + (group_size - 1)`` passages: one positive first, then negatives. Sampling is a
pure function of (seed, epoch, row) so every worker, restart and resume draws the same groups.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raydr.errors import RaydrError

NEGATIVES = pa.schema(
    [
        pa.field("query_id", pa.string(), nullable=False),
        pa.field("negatives", pa.list_(pa.string()), nullable=False),
    ]
)


@dataclass(frozen=True)
class TrainRow:
    query_id: str
    query: str
    positives: tuple[str, ...]
    negatives: tuple[str, ...]


def load_negatives(path: str | Path) -> dict[str, list[str]]:
    """``{query_id: [doc_id, ...]}`` from a negatives Parquet file (``raydr mine-negatives``)."""
    path = Path(path)
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise RaydrError(f"{path}: cannot read negatives table ({exc})") from None
    for field in NEGATIVES:
        if (
            field.name not in table.column_names
            or table.schema.field(field.name).type != field.type
        ):
            raise RaydrError(f"{path}: expected column {field.name!r} of type {field.type}")
    return dict(zip(table["query_id"].to_pylist(), table["negatives"].to_pylist(), strict=True))


def build_rows(
    data_dir: str | Path, split: str, negatives: dict[str, list[str]] | None = None
) -> list[TrainRow]:
    """One row per judged query of ``split`` (relevance > 0 are positives), in id order."""
    from raydr.data.tables import load_qrels, load_queries

    qrels = load_qrels(data_dir, split)
    queries = load_queries(data_dir)
    text = dict(zip(queries["query_id"].to_pylist(), queries["text"].to_pylist(), strict=True))
    rows = []
    for qid in sorted(qrels):
        positives = tuple(sorted(d for d, rel in qrels[qid].items() if rel > 0))
        if not positives or qid not in text:
            continue
        negs = tuple(d for d in (negatives or {}).get(qid, []) if d not in qrels[qid])
        rows.append(TrainRow(qid, text[qid], positives, negs))
    if not rows:
        raise RaydrError(
            f"{data_dir}: split {split!r} has no query with a positive; nothing to train on"
        )
    return rows


def check_group_size(rows: list[TrainRow], group_size: int, source: str) -> None:
    """Every row needs ``group_size - 1`` distinct negatives; name the first that lacks them."""
    need = group_size - 1
    short = [r for r in rows if len(set(r.negatives)) < need]
    if need > 0 and short:
        r = short[0]
        raise RaydrError(
            f"training.group_size={group_size} needs {need} hard negatives per query, but "
            f"{len(short)} of {len(rows)} queries have fewer (e.g. query {r.query_id!r} has "
            f"{len(set(r.negatives))} in {source}); lower group_size or mine more negatives"
        )


def sample_group(
    row: TrainRow, row_index: int, epoch: int, seed: int, group_size: int
) -> list[str]:
    """Positive first, then ``group_size - 1`` negatives; pure in (seed, epoch, row_index)."""
    rng = np.random.default_rng([seed, epoch, row_index])
    positive = row.positives[rng.integers(len(row.positives))]
    if group_size == 1:
        return [positive]
    pool = sorted(set(row.negatives))
    picks = rng.choice(len(pool), size=group_size - 1, replace=False)
    return [positive, *(pool[i] for i in picks)]


def shard(
    num_rows: int, epoch: int, seed: int, rank: int, world: int, batch_size: int, start: int = 0
) -> list[np.ndarray]:
    """This worker's batches for ``epoch``: a seeded permutation cut into disjoint shards.

    ``start`` skips the permutation's first rows, the ones this epoch already consumed, so a
    resume continues where training stopped even when the worker count changed (elastic
    training: step s at world w consumed rows [0, s*w*batch_size) of the permutation).
    Rows are dropped so every worker gets the same number of full batches; cross-batch
    gathering needs equal shapes on every rank.
    """
    order = np.random.default_rng([seed, epoch, 7919]).permutation(num_rows)[start:]
    per_step = batch_size * world
    steps = len(order) // per_step
    if steps == 0 and start == 0:
        raise RaydrError(
            f"{num_rows} training queries cannot fill one step of batch_size={batch_size} "
            f"x {world} workers; lower training.batch_size"
        )
    order = order[: steps * per_step].reshape(steps, world, batch_size)
    return [order[s, rank] for s in range(steps)]
