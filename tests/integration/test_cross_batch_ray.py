"""Cross-batch InfoNCE on a real 2-worker Ray Train run equals one process with the whole batch.

2 workers × B queries (each with a positive and 2 hard negatives) must give the same loss and
the same DDP-averaged gradients as 1 process × 2B. Hard negatives matter: a gather-order bug
that only shuffles passages *between* groups is invisible when every group is one positive.
One `fit()` runs every scenario (Train's worker group costs ~25 s to start and stop).
"""

from __future__ import annotations

import sys
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch
from torch import nn

from raydr.config import ModelConfig
from raydr.losses import AdaptiveMarginLoss, InfoNCELoss
from raydr.model.encoder import DualEncoder

ray = pytest.importorskip("ray")

# The test folder is not importable in Ray workers: ship this module's code by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.ray

WORKERS, B, G = 2, 3, 3  # G = positive + 2 hard negatives
ACCUM = 2  # micro-batches per step in the accumulation test
TOL = 1e-5


def _forward(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The call the training loop makes: ``DualEncoder.forward``, both sides at once, so DDP
    sees (and syncs) every use of the weights. → q (B, D), p (B*G, D)."""
    return model(batch["q_ids"], batch["q_mask"], batch["p_ids"], batch["p_mask"])


def _model(model_dir: str) -> DualEncoder:
    torch.manual_seed(0)  # loading is deterministic already; the seed guards any fresh init
    # eval(): no dropout (the tiny BERT keeps the default 0.1), so runs are comparable exactly.
    return DualEncoder.from_config(ModelConfig(name=model_dir)).float().eval()


def _batch(vocab_size: int, n_queries: int, seed: int = 1234) -> dict[str, torch.Tensor]:
    """Token ids + masks: q (n, 6), p (n*G, 10), right-padded to random lengths."""
    gen = torch.Generator().manual_seed(seed)

    def texts(n: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.randint(5, vocab_size, (n, length), generator=gen)  # 0-4: special tokens
        ids[:, 0] = 2  # [CLS]
        lengths = torch.randint(3, length + 1, (n, 1), generator=gen)
        mask = (torch.arange(length) < lengths).long()
        return ids * mask, mask  # padding is [PAD] = 0

    q_ids, q_mask = texts(n_queries, 6)
    p_ids, p_mask = texts(n_queries * G, 10)
    return {"q_ids": q_ids, "q_mask": q_mask, "p_ids": p_ids, "p_mask": p_mask}


def _rows(batch: dict[str, torch.Tensor], first: int, count: int) -> dict[str, torch.Tensor]:
    """Queries [first, first+count) and their passage groups."""
    q = slice(first, first + count)
    p = slice(first * G, (first + count) * G)
    return {k: v[q] if k.startswith("q") else v[p] for k, v in batch.items()}


def _loss_and_grads(model: nn.Module, batches: list[dict], cross_batch: bool | nn.Module) -> dict:
    """Gradient accumulation as the loop does it: each micro-batch's loss / len(batches),
    DDP's all-reduce skipped (no_sync) on all but the last. → mean loss, summed grads."""
    model.zero_grad(set_to_none=True)
    loss_fn = (
        cross_batch
        if isinstance(cross_batch, nn.Module)
        else InfoNCELoss(temperature=0.05, cross_batch=cross_batch)
    )
    total = 0.0
    for i, batch in enumerate(batches):
        last = i == len(batches) - 1
        no_sync = model.no_sync() if hasattr(model, "no_sync") and not last else nullcontext()
        with no_sync:
            loss = loss_fn(*_forward(model, batch)) / len(batches)
            loss.backward()
        total += loss.item()
    inner = model.module if hasattr(model, "module") else model  # DDP or not
    grads = {n: p.grad.detach().clone() for n, p in inner.named_parameters()}
    return {"loss": total, "grads": grads}


# Margin losses that gather every worker's hard negatives (the in-batch variant and distributed
# targets): across 2 workers they must equal one process with the whole batch, as InfoNCE does.
_MARGINS = {
    "margin_in_batch": AdaptiveMarginLoss(in_batch=True, cross_batch=True),
    "margin_distributed": AdaptiveMarginLoss(target="distributed", error="softplus"),
}


def _grad_cache(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict:
    """GradCache, one query per chunk, through the same cross-batch loss."""
    from raydr.training.gradcache import grad_cache_step

    model.zero_grad(set_to_none=True)
    parts = (batch["q_ids"], batch["q_mask"], batch["p_ids"], batch["p_mask"])
    loss, _ = grad_cache_step(model, InfoNCELoss(temperature=0.05, cross_batch=True), parts, 1)
    inner = model.module if hasattr(model, "module") else model
    return {"loss": loss.item(), "grads": {n: p.grad.clone() for n, p in inner.named_parameters()}}


def _worker_loop(config: dict) -> None:
    import ray.train
    import ray.train.torch

    rank = ray.train.get_context().get_world_rank()
    model = ray.train.torch.prepare_model(_model(config["model_dir"]))  # DDP over gloo
    mine = _rows(config["batch"], rank * B, B)
    # Two micro-batches: micro m of rank r holds rows (m * WORKERS + r) * B onwards.
    micro = [_rows(config["accum"], (m * WORKERS + rank) * B, B) for m in range(ACCUM)]
    out = {
        "cross": _loss_and_grads(model, [mine], cross_batch=True),
        "local": _loss_and_grads(model, [mine], cross_batch=False),
        "accum": _loss_and_grads(model, micro, cross_batch=True),
        **{name: _loss_and_grads(model, [mine], loss) for name, loss in _MARGINS.items()},
        "gradcache": _grad_cache(model, mine),
    }
    # Unequal batch sizes must fail loudly on every rank, not hang or mis-target.
    uneven = _rows(config["batch"], rank * B, B - rank)
    with torch.no_grad():
        try:
            InfoNCELoss(cross_batch=True)(*_forward(model.module, uneven))
            out["uneven"] = None
        except ValueError as exc:
            out["uneven"] = str(exc)
    torch.save(out, Path(config["out"]) / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, object_store_memory=100 * 1024**2, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def runs(ray_cluster, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Each worker's results, plus the single-process reference on the whole 2B batch."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    tmp = tmp_path_factory.mktemp("cross-batch")
    model = _model(str(tiny_model_dir))
    vocab = model.query_tower.config.vocab_size
    batch, accum = _batch(vocab, WORKERS * B), _batch(vocab, ACCUM * WORKERS * B, seed=99)
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={
            "model_dir": str(tiny_model_dir),
            "batch": batch,
            "accum": accum,
            "out": str(tmp),
        },
        scaling_config=ScalingConfig(num_workers=WORKERS, use_gpu=False),
        run_config=RunConfig(storage_path=str(tmp / "ray"), name="cross-batch"),
    )
    trainer.fit()
    workers = [torch.load(tmp / f"rank{r}.pt") for r in range(WORKERS)]
    # One process, whole batch: the gather is the identity, targets i*G over 2B queries.
    single = _loss_and_grads(model, [batch], cross_batch=True)
    # Accumulation: micro-batch m of the whole group is rows [m*W*B, (m+1)*W*B).
    micro = [_rows(accum, m * WORKERS * B, WORKERS * B) for m in range(ACCUM)]
    return {
        "workers": workers,
        "single": single,
        "single_accum": _loss_and_grads(model, micro, cross_batch=True),
        "one_big_batch": _loss_and_grads(model, [accum], cross_batch=True),
        **{name: _loss_and_grads(model, [batch], loss) for name, loss in _MARGINS.items()},
    }


def _max_grad_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[n] - b[n]).abs().max().item() for n in a)


def test_two_workers_equal_one_process_with_the_whole_batch(runs: dict) -> None:
    single, workers = runs["single"], [w["cross"] for w in runs["workers"]]
    mean_loss = sum(w["loss"] for w in workers) / WORKERS
    assert mean_loss == pytest.approx(single["loss"], abs=TOL)
    assert workers[0]["loss"] != pytest.approx(workers[1]["loss"], abs=1e-3)  # not trivially
    for rank, w in enumerate(workers):
        diff = _max_grad_diff(w["grads"], single["grads"])
        print(f"rank {rank}: max |grad - single-process grad| = {diff:.2e}")
        assert diff <= TOL, f"rank {rank}: gradients differ by {diff:.2e}"


def test_negative_control_local_only_does_not_match(runs: dict) -> None:
    # Without the gather each query sees B*G passages, not 2B*G: a different loss. If this
    # matched, the equivalence test above could not catch a broken gather.
    single = runs["single"]
    for w in runs["workers"]:
        assert _max_grad_diff(w["local"]["grads"], single["grads"]) > 100 * TOL
    mean_local = sum(w["local"]["loss"] for w in runs["workers"]) / WORKERS
    assert mean_local < single["loss"] - 1e-3  # fewer negatives: an easier task


def test_uneven_batches_fail_on_every_worker(runs: dict) -> None:
    for w in runs["workers"]:
        assert w["uneven"] is not None
        assert "rank 0: B=3 G=3, rank 1: B=2 G=3" in w["uneven"]


def test_grad_accum_is_a_mean_over_cross_batch_micro_batches_not_one_big_batch(runs: dict) -> None:
    """With grad_accum=k, each micro-batch gathers the W*B queries' passages of that
    micro-batch only: the step is the mean of k cross-batch losses, each over W*B*G passages,
    NOT one loss over all k*W*B queries (whose negatives would be k times as many). What holds,
    and is tested: the accumulated gradients on every rank equal one process taking the same k
    micro-batches of W*B queries in turn."""
    ref, big = runs["single_accum"], runs["one_big_batch"]
    for rank, w in enumerate(runs["workers"]):
        accum = w["accum"]
        diff = _max_grad_diff(accum["grads"], ref["grads"])
        assert diff <= TOL, f"rank {rank}: accumulated gradients differ by {diff:.2e}"
        assert _max_grad_diff(accum["grads"], big["grads"]) > 100 * TOL  # not one big batch
    mean_loss = sum(w["accum"]["loss"] for w in runs["workers"]) / WORKERS
    assert mean_loss == pytest.approx(ref["loss"], abs=TOL)
    assert big["loss"] > ref["loss"] + 1e-3  # k times the negatives: a harder task


@pytest.mark.parametrize("name", sorted(_MARGINS))
def test_margin_losses_across_two_workers_equal_one_process(runs: dict, name: str) -> None:
    single, workers = runs[name], [w[name] for w in runs["workers"]]
    assert sum(w["loss"] for w in workers) / WORKERS == pytest.approx(single["loss"], abs=TOL)
    for rank, w in enumerate(workers):
        diff = _max_grad_diff(w["grads"], single["grads"])
        assert diff <= TOL, f"{name} rank {rank}: gradients differ by {diff:.2e}"


def test_grad_cache_across_two_workers_equals_one_process_with_the_whole_batch(runs: dict) -> None:
    # Each worker encodes its 3 queries one at a time; the loss still gathers all passages.
    single, workers = runs["single"], [w["gradcache"] for w in runs["workers"]]
    assert sum(w["loss"] for w in workers) / WORKERS == pytest.approx(single["loss"], abs=TOL)
    for rank, w in enumerate(workers):
        diff = _max_grad_diff(w["grads"], single["grads"])
        assert diff <= TOL, f"GradCache rank {rank}: gradients differ by {diff:.2e}"
