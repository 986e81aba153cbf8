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


def last_step(tcfg: TrainingConfig, total: int) -> int:
    """The step a run ends at: ``stop_at`` when it comes before the schedule's ``total``."""
    return min(total, tcfg.stop_at or total)


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


def bank_rows(tcfg: TrainingConfig, world: int) -> tuple[int, int]:
    """Memory bank rows → (used in the loss at ``world`` workers, kept in the bank).

    With ``hold_negatives`` a smaller world uses the passages its missing workers would have
    contributed from the bank instead: W*B*G + used stays what it is at the most workers. The
    bank keeps enough rows for the smallest world."""
    mcfg = tcfg.memory_bank
    if not mcfg.hold_negatives:
        return mcfg.size, mcfg.size
    low, high = world_sizes(tcfg)
    per_worker = tcfg.batch_size * tcfg.group_size
    return mcfg.size + (high - world) * per_worker, mcfg.size + (high - low) * per_worker
