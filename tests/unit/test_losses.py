"""InfoNCE in one process: argument checks, the group layout, and the gather's identity case."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from raydr.dist import all_gather_sizes, all_gather_with_grad, get_rank, get_world_size
from raydr.losses import InfoNCELoss


@pytest.mark.parametrize("temperature", [0, -0.1, math.nan, "0.05", True])
def test_rejects_bad_temperature(temperature: object) -> None:
    with pytest.raises(ValueError, match="temperature"):
        InfoNCELoss(temperature=temperature)  # type: ignore[arg-type]


def test_rejects_bad_cross_batch() -> None:
    with pytest.raises(ValueError, match="cross_batch"):
        InfoNCELoss(cross_batch="yes")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("q_shape", "p_shape"),
    [((3, 8), (8, 8)), ((3, 8), (9, 4)), ((3, 8), (0, 8)), ((0, 8), (0, 8)), ((3,), (9,))],
)
def test_rejects_passages_that_are_not_groups(q_shape: tuple, p_shape: tuple) -> None:
    loss = InfoNCELoss()
    with pytest.raises(ValueError, match=r"q \(.*\) and p \(.*\)") as err:
        loss(torch.randn(q_shape), torch.randn(p_shape))
    assert str(tuple(q_shape)) in str(err.value) and str(tuple(p_shape)) in str(err.value)


def test_negatives_per_query() -> None:
    assert InfoNCELoss(cross_batch=True).negatives_per_query(3, 3, 2) == 17  # W*B*G - 1
    assert InfoNCELoss(cross_batch=False).negatives_per_query(3, 3, 2) == 8  # B*G - 1
    with pytest.raises(ValueError):
        InfoNCELoss().negatives_per_query(0, 3, 2)


def _one_hot_groups(b: int, g: int) -> tuple[torch.Tensor, torch.Tensor]:
    """p (B*G, B*G): orthonormal rows; q (B, B*G): query i equals its positive p[i*G]."""
    p = torch.eye(b * g)
    return p[::g].clone(), p


@pytest.mark.parametrize("cross_batch", [True, False])
def test_target_is_first_passage_of_each_group(cross_batch: bool) -> None:
    b, g = 3, 3
    q, p = _one_hot_groups(b, g)
    loss = InfoNCELoss(temperature=0.05, cross_batch=cross_batch)
    # Target score 1/0.05 = 20, the other 8 scores 0: loss = log(1 + 8e-20) ≈ 1.6e-8.
    assert loss(q, p).item() < 1e-6
    # Put a hard negative first in groups 0 and 2: those queries now miss their target.
    swapped = p.clone()
    swapped[[0, 1]] = p[[1, 0]]
    swapped[[6, 7]] = p[[7, 6]]
    assert loss(q, swapped).item() == pytest.approx(2 * 20 / 3, rel=1e-3)


def test_equals_cross_entropy_on_hand_built_scores() -> None:
    torch.manual_seed(0)
    b, g, d, tau = 4, 3, 16, 0.1
    q = torch.randn(b, d, requires_grad=True)
    p = torch.randn(b * g, d, requires_grad=True)
    scores = torch.empty(b, b * g)
    for i in range(b):
        for j in range(b * g):
            scores[i, j] = torch.dot(q[i], p[j]).item() / tau
    expected = F.cross_entropy(scores, torch.tensor([0, 3, 6, 9]))
    got = InfoNCELoss(temperature=tau)(q, p)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    got.backward()  # the loss is differentiable in both inputs
    assert q.grad is not None and p.grad is not None


def test_gather_is_identity_when_not_distributed() -> None:
    assert get_rank() == 0 and get_world_size() == 1
    x = torch.randn(5, 4, requires_grad=True)
    assert all_gather_with_grad(x) is x
    assert all_gather_sizes((3, 2), x.device) == [(3, 2)]
    # Hence cross batch and local scoring agree in a single process.
    q, p = torch.randn(3, 8), torch.randn(9, 8)
    assert torch.equal(InfoNCELoss(cross_batch=True)(q, p), InfoNCELoss(cross_batch=False)(q, p))


def test_memory_bank_is_first_in_first_out_and_waits_for_warm_up() -> None:
    from raydr.losses import MemoryBank

    bank = MemoryBank(size=5, warmup_steps=2)
    assert len(bank) == 0 and not bank.active(3)  # empty: nothing to add yet
    bank.push(torch.arange(6.0).view(3, 2), torch.tensor([0, 1, 2]))
    bank.push(10 + torch.arange(6.0).view(3, 2), torch.tensor([3, 4, 5]))
    assert bank.doc.tolist() == [1, 2, 3, 4, 5]  # oldest dropped first
    assert bank.emb[0].tolist() == [2.0, 3.0] and bank.emb[-1].tolist() == [14.0, 15.0]
    assert not bank.active(2) and bank.active(3)
    again = MemoryBank(size=3)
    again.load_state_dict(bank.state_dict(), torch.device("cpu"))  # a smaller bank keeps the newest
    assert again.doc.tolist() == [3, 4, 5] and torch.equal(again.emb, bank.emb[-3:])


def _manual_ce(scores: torch.Tensor, target: int, drop: list[int]) -> float:
    keep = [j for j in range(scores.shape[0]) if j not in drop]
    kept = scores[keep]
    return float(torch.logsumexp(kept, 0) - scores[target])


def test_judged_passages_are_never_negatives_in_the_batch_or_the_bank() -> None:
    from raydr.losses import MemoryBank

    torch.manual_seed(0)
    q, p = torch.randn(2, 4), torch.randn(4, 4)  # B=2, G=2
    q[0], p[3] = p[0], p[0]  # query 0 matches its positive, which q1's group holds again
    p_doc = torch.tensor([10, 11, 20, 10])  # planted: query 0's positive doc 10 is q1's negative
    q_pos = torch.tensor([[10, -1], [20, 21]])
    bank = MemoryBank(size=3)
    old = torch.stack([q[1], p[0], torch.randn(4)])  # judged docs seen in earlier steps
    bank.push(old, torch.tensor([21, 10, 30]))
    loss = InfoNCELoss(temperature=0.5, cross_batch=False)
    scores = torch.cat([q @ p.T, q @ bank.emb.T], dim=1) / 0.5  # columns: batch 0-3, bank 4-6
    # Query 0: its duplicate positive (column 3) and the bank's copy of doc 10 (column 5) are
    # dropped; query 1: the bank's doc 21 (column 4), judged relevant to it, is dropped.
    want = (_manual_ce(scores[0], 0, [3, 5]) + _manual_ce(scores[1], 2, [4])) / 2
    assert loss(q, p, p_doc, q_pos, bank=bank).item() == pytest.approx(want, abs=1e-5)
    unmasked = (_manual_ce(scores[0], 0, []) + _manual_ce(scores[1], 2, [])) / 2
    assert loss(q, p, bank=bank).item() == pytest.approx(unmasked, abs=1e-5)
    assert abs(want - unmasked) > 1e-3
    assert loss.negatives_per_query(2, 2, 1, bank=3) == 2 * 2 - 1 + 3


def test_memory_bank_newest_is_the_last_rows_pushed() -> None:
    """Pins ``newest(n)`` to the newest rows: a bank that handed out its oldest rows would score
    the queries against the stalest embeddings (the training loop reads the bank this way)."""
    from raydr.losses import MemoryBank

    bank = MemoryBank(size=6)
    bank.push(torch.arange(8.0).view(4, 2), torch.tensor([0, 1, 2, 3]))
    bank.push(10 + torch.arange(4.0).view(2, 2), torch.tensor([4, 5]))
    two = bank.newest(2)
    assert two.doc.tolist() == [4, 5]
    assert two.emb.tolist() == [[10.0, 11.0], [12.0, 13.0]]
    assert torch.equal(bank.newest(5).doc, torch.tensor([1, 2, 3, 4, 5]))
    assert torch.equal(bank.newest(5).emb, bank.emb[1:])
    everything = bank.newest(50)  # more than there are: all of them, newest still last
    assert everything.doc.tolist() == [0, 1, 2, 3, 4, 5] and torch.equal(everything.emb, bank.emb)
    assert len(bank.newest(0)) == 0 and len(MemoryBank(size=3).newest(2)) == 0
