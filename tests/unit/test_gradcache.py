"""GradCache gives the loss and gradients of one backward over the whole batch (tiny BERT)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from raydr.config import ModelConfig
from raydr.losses import InfoNCELoss
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


def _reference(model: DualEncoder, batch, chunk: int, seed: int) -> tuple[float, dict]:
    """One graph over the whole batch, encoded chunk by chunk (the same dropout draws as
    GradCache's), one backward."""
    q_ids, q_mask, p_ids, p_mask = batch
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    qs, ps = [], []
    for s in range(0, B, chunk):
        e = min(s + chunk, B)
        q, p = model(q_ids[s:e], q_mask[s:e], p_ids[s * G : e * G], p_mask[s * G : e * G])
        qs.append(q)
        ps.append(p)
    loss = InfoNCELoss(cross_batch=False)(torch.cat(qs), torch.cat(ps))
    loss.backward()
    return loss.item(), _grads(model)


def _cached(model: DualEncoder, batch, chunk: int, seed: int) -> tuple[float, dict]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    loss, _ = grad_cache_step(model, InfoNCELoss(cross_batch=False), batch, chunk)
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
