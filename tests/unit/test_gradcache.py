"""GradCache gives the loss and gradients of one backward over the whole batch (tiny BERT)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from raydr.config import ModelConfig
from raydr.losses import AdaptiveMarginLoss, InfoNCELoss, MemoryBank
from raydr.model.encoder import DualEncoder
from raydr.training.gradcache import grad_cache_step

B, G = 4, 2


def _batch(vocab: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(7)

    def texts(n: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.randint(5, vocab, (n, length), generator=gen)
        ids[:, 0] = 2
        mask = (torch.arange(length) < torch.randint(3, length + 1, (n, 1), generator=gen)).long()
        return ids * mask, mask

    return (*texts(B, 6), *texts(B * G, 10))


def _grads(model: DualEncoder) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _reference(
    model: DualEncoder, batch, chunk: int, seed: int, loss_fn: nn.Module | None = None, **kwargs
) -> tuple[float, dict]:
    """One graph over the whole batch, encoded chunk by chunk (the same dropout draws as
    GradCache's), one backward. ``loss_fn`` (InfoNCE by default) gets ``kwargs``."""
    q_ids, q_mask, p_ids, p_mask = batch
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    qs, ps = [], []
    for s in range(0, B, chunk):
        e = min(s + chunk, B)
        q, p = model(q_ids[s:e], q_mask[s:e], p_ids[s * G : e * G], p_mask[s * G : e * G])
        qs.append(q)
        ps.append(p)
    loss_fn = loss_fn or InfoNCELoss(cross_batch=False)
    loss = loss_fn(torch.cat(qs), torch.cat(ps), **kwargs)
    loss.backward()
    return loss.item(), _grads(model)


def _cached(
    model: DualEncoder, batch, chunk: int, seed: int, loss_fn: nn.Module | None = None, **kwargs
) -> tuple[float, dict]:
    """``grad_cache_step``'s loss and gradients; ``kwargs`` (``scale``, the loss's) go to it."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    loss_fn = loss_fn or InfoNCELoss(cross_batch=False)
    loss, _ = grad_cache_step(model, loss_fn, batch, chunk, **kwargs)
    return loss.item(), _grads(model)


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path) -> DualEncoder:
    return DualEncoder.from_config(ModelConfig(name=str(tiny_model_dir))).float()


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys() and a
    return max((a[n] - b[n]).abs().max().item() for n in a)


@pytest.mark.parametrize("chunk", [1, 3, 4])
def test_same_loss_and_gradients_as_one_backward_with_dropout(model, chunk: int) -> None:
    model.train()  # dropout on: the re-encoding must replay each chunk's draws
    batch = _batch(model.query_tower.config.vocab_size)
    want_loss, want = _reference(model, batch, chunk, seed=3)
    got_loss, got = _cached(model, batch, chunk, seed=3)
    assert got_loss == pytest.approx(want_loss, abs=1e-6)
    assert _max_diff(got, want) < 1e-5


def test_chunks_equal_the_whole_batch_at_once_without_dropout(model) -> None:
    model.eval()
    batch = _batch(model.query_tower.config.vocab_size)
    whole_loss, whole = _reference(model, batch, chunk=B, seed=0)  # one forward, whole batch
    for chunk in (1, 2):
        loss, grads = _cached(model, batch, chunk, seed=0)
        assert loss == pytest.approx(whole_loss, abs=1e-6)
        assert _max_diff(grads, whole) < 1e-5
    model.train()


def test_scale_multiplies_the_loss_and_every_gradient(model) -> None:
    """Pins ``scale`` (1 / grad_accum): a GradCache step that dropped it would count every
    accumulated micro-batch in full, grad_accum times the gradient of the plain loop."""
    model.eval()
    batch = _batch(model.query_tower.config.vocab_size)
    plain_loss, plain = _reference(model, batch, chunk=2, seed=0)
    loss, grads = _cached(model, batch, 2, seed=0, scale=0.25)
    assert loss == pytest.approx(0.25 * plain_loss, abs=1e-6)
    assert _max_diff(grads, {n: 0.25 * g for n, g in plain.items()}) < 1e-6
    assert _max_diff(grads, plain) > 1e-4  # the test has power: scale 1 is far off
    model.train()


def _judged() -> dict[str, torch.Tensor]:
    """Doc ids for the batch's B*G passages, and judged docs per query that other queries'
    groups hold: query 0's judged doc 3 is query 1's hard negative, query 2's doc 7 query 3's."""
    return {"p_doc": torch.arange(B * G), "q_pos": torch.tensor([[0, 3], [2, -1], [4, 7], [6, -1]])}


def _bank(model: DualEncoder, batch) -> MemoryBank:
    """Three passages of an earlier step as the encoder saw them; one is doc 0, judged relevant
    to query 0 (never its negative), the other two are unjudged docs that every query scores."""
    q_ids, q_mask, p_ids, p_mask = batch
    rows = torch.tensor([0, 2, 5])
    with torch.no_grad():
        _, p = model(q_ids[:1], q_mask[:1], p_ids[rows], p_mask[rows])
    bank = MemoryBank(size=3)
    bank.push(p, torch.tensor([0, 40, 41]))
    return bank


@pytest.mark.parametrize("name", ["infonce_bank_and_masks", "margin_in_batch_masks"])
def test_forwards_the_memory_bank_and_judged_masks_to_the_loss(model, name: str) -> None:
    """Pins the loss kwargs GradCache forwards: without them the bank and the judged masks would
    be silently lost whenever ``grad_cache_chunk`` is set."""
    model.eval()
    batch = _batch(model.query_tower.config.vocab_size)
    kwargs: dict = _judged()
    if name == "infonce_bank_and_masks":
        loss_fn: nn.Module = InfoNCELoss(cross_batch=False)
        kwargs["bank"] = _bank(model, batch)
    else:
        loss_fn = AdaptiveMarginLoss(in_batch=True, cross_batch=False)
    want_loss, want = _reference(model, batch, 2, 0, loss_fn, **kwargs)
    got_loss, got = _cached(model, batch, 2, 0, loss_fn, **kwargs)
    assert got_loss == pytest.approx(want_loss, abs=1e-6)
    assert _max_diff(got, want) < 1e-5
    with torch.no_grad():  # the test has power: leaving out any one of the kwargs shows
        q, p = model(*batch)
        for left_out in kwargs:
            rest = {k: v for k, v in kwargs.items() if k != left_out}
            assert abs(loss_fn(q, p, **rest).item() - want_loss) > 1e-3, left_out
    model.train()
