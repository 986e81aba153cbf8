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
