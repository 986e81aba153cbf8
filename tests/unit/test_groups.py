"""Sharding and group sampling: pure, seeded functions of (row, epoch)."""

from __future__ import annotations

import numpy as np
import pytest

from raydr.data.groups import shard
from raydr.errors import RaydrError


def test_shards_are_disjoint_and_cover_full_steps() -> None:
    ranks = [shard(50, 1, 7, r, 3, 4) for r in range(3)]
    rows = np.concatenate([b for batches in ranks for b in batches])
    assert len(rows) == len(set(rows.tolist())) == 48  # 50 // (3*4) = 4 steps of 12 rows
    assert all(len(batches) == 4 for batches in ranks)
    assert [b.tolist() for b in shard(50, 1, 7, 0, 3, 4)] == [b.tolist() for b in ranks[0]]
    assert shard(50, 2, 7, 0, 3, 4)[0].tolist() != ranks[0][0].tolist()  # a new epoch reshuffles


def test_resume_at_another_world_size_continues_the_same_permutation() -> None:
    # 3 steps at world 1 (batch 4) consume rows [0, 12) of the epoch's permutation; an elastic
    # restart at world 2 must go on with rows [12, ...), never repeating or skipping any.
    before = np.concatenate(shard(40, 0, 3, 0, 1, 4)[:3])
    after = [shard(40, 0, 3, r, 2, 4, start=12) for r in range(2)]
    seen = np.concatenate([before, *[b for batches in after for b in batches]])
    full = np.concatenate(shard(40, 0, 3, 0, 1, 4))
    assert len(after[0]) == 3  # 28 rows left // (2 x 4)
    assert len(set(seen.tolist())) == len(seen) == 36  # no row twice
    assert seen[:12].tolist() == full[:12].tolist()
    assert sorted(seen[12:].tolist()) == sorted(
        np.random.default_rng([3, 0, 7919]).permutation(40)[12:36].tolist()
    )


def test_exhausted_epoch_gives_no_batches_but_a_too_small_dataset_is_an_error() -> None:
    assert shard(10, 0, 0, 0, 1, 4, start=8) == []
    with pytest.raises(RaydrError, match="cannot fill one step of batch_size=8 x 2 workers"):
        shard(10, 0, 0, 0, 2, 8)


@pytest.mark.parametrize(
    ("rows", "world", "batch", "accum"), [(50, 3, 4, 1), (50, 2, 4, 2), (7, 1, 2, 3)]
)
def test_steps_per_epoch_is_what_shard_yields(
    rows: int, world: int, batch: int, accum: int
) -> None:
    from raydr.training import plan

    micro_batches = len(shard(rows, 0, 0, 0, world, batch))
    assert plan.steps_per_epoch(rows, world, batch, accum) == micro_batches // accum
