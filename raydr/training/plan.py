"""Step arithmetic, in one place for the loop, the trainer's checks and Tune's rungs.

A step consumes ``world x batch_size x grad_accum`` training rows. Each epoch is a seeded
permutation of the rows cut into equal shards (``data.groups.shard``), dropping the remainder.
"""

from __future__ import annotations

from raydr.config import TrainingConfig


def steps_per_epoch(num_rows: int, world: int, batch_size: int, grad_accum: int) -> int:
    """Optimizer steps in one full epoch at ``world`` workers."""
    return num_rows // (world * batch_size) // grad_accum


def total_steps(tcfg: TrainingConfig, num_rows: int, world: int) -> int:
    """Optimizer steps of a whole run at ``world`` workers (``max_steps`` wins when set)."""
    if tcfg.max_steps:
        return tcfg.max_steps
    return steps_per_epoch(num_rows, world, tcfg.batch_size, tcfg.grad_accum) * tcfg.epochs


def remaining_steps(
    tcfg: TrainingConfig, num_rows: int, world: int, step: int, epoch: int, epoch_rows: int
) -> int:
    """The run's total step count when resuming at (``step``, ``epoch``, ``epoch_rows`` rows of
    it consumed) at ``world`` workers: the rest of this epoch, then whole epochs. With a fixed
    world size this equals ``total_steps``; after an elastic resize it follows the new size."""
    if tcfg.max_steps:
        return tcfg.max_steps
    rows_per_step = world * tcfg.batch_size * tcfg.grad_accum
    left_in_epoch = (num_rows - epoch_rows) // rows_per_step
    per_epoch = steps_per_epoch(num_rows, world, tcfg.batch_size, tcfg.grad_accum)
    return step + left_in_epoch + per_epoch * (tcfg.epochs - epoch - 1)


def world_sizes(tcfg: TrainingConfig) -> tuple[int, int]:
    """(min, max) workers: equal for a fixed count, the range for elastic training."""
    n = tcfg.num_workers
    return (n[0], n[1]) if isinstance(n, tuple) else (n, n)
