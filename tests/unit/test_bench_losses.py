"""`raydr bench losses`: every arm is the job plus its overrides, sized from the job's batch."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from raydr import config
from raydr.bench import losses
from raydr.errors import RaydrError

JOB = Path(__file__).resolve().parents[2] / "jobs" / "scifact-losses.yaml"


def _args(*overrides: str, arms: str = ",".join(losses.ARMS)) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    losses.add_arguments(p)
    return p.parse_args([str(JOB), *overrides, "--arms", arms])


def test_each_arm_changes_only_its_negatives_and_loss_at_the_jobs_budget() -> None:
    args = _args("training.lr=3e-5")
    base = config.load(JOB, ["training.lr=3e-5"]).training
    world = base.num_workers
    cfgs = {arm: config.load(JOB, losses._overrides(args, arm, 1)) for arm in losses.ARMS}
    for arm, cfg in cfgs.items():
        t = cfg.training
        # The shared budget and the global override reach every arm.
        assert (t.max_steps, t.lr, cfg.model.passage_max_length) == (40, 3e-5, 128), arm
        assert cfg.name == f"bench-losses-{arm}-1"
    assert not cfgs["in-batch"].training.cross_batch
    assert cfgs["cross-batch"].training.group_size == 1
    assert cfgs["cross-batch+bm25"].training.group_size == 2
    # Bank: --bank-steps (4) steps of the arm's passages from all workers, after --bank-warmup.
    bank = cfgs["cross-batch+bank"].training.memory_bank
    assert (bank.size, bank.warmup_steps) == (4 * world * base.batch_size * 1, 4)
    assert (
        cfgs["cross-batch+bm25+bank"].training.memory_bank.size == 4 * world * base.batch_size * 2
    )
    # GradCache: 4x the queries per worker, encoded one job batch at a time.
    gc = cfgs["cross-batch+bm25+gradcache"].training
    assert (gc.batch_size, gc.grad_cache_chunk) == (4 * base.batch_size, base.batch_size)
    whole = cfgs["cross-batch+bm25+bigbatch"].training
    assert (whole.batch_size, whole.grad_cache_chunk) == (gc.batch_size, None)
    assert cfgs["self-distillation"].training.loss.type == "margin"
    assert cfgs["cross-batch+bm25"].training.loss.type == "infonce"


def test_unknown_arm_or_a_baseline_not_run_is_one_error_naming_the_choices() -> None:
    with pytest.raises(RaydrError, match="expected arms among in-batch"):
        losses.main(_args(arms="cross-batch+bm25,nope"))
    with pytest.raises(RaydrError, match="the baseline among them"):
        losses.main(_args(arms="in-batch"))
