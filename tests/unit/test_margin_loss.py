"""AdaptiveMarginLoss against values worked out by hand from angles on the unit circle.

Every embedding is a 2-d vector at a known angle (scaled by an arbitrary norm, which cosine
similarity must ignore), so each similarity is cos(angle difference) and each expected loss is
a few lines of trigonometry, independent of the module's tensor code.
"""

from __future__ import annotations

import math

import pytest
import torch

from raydr.losses import AdaptiveMarginLoss

# Two queries, each with its positive and one hard negative (G = 2), as angles in degrees.
Q = [0.0, 90.0]
POS = [30.0, 100.0]
NEG = [90.0, 200.0]


def _vec(deg: float, norm: float) -> list[float]:
    return [norm * math.cos(math.radians(deg)), norm * math.sin(math.radians(deg))]


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    q = torch.tensor([_vec(a, 2.0) for a in Q])
    # Layout (B*G, D): query i's positive at row 2i, its negative at row 2i+1.
    p = torch.tensor(
        [
            _vec(a, n)
            for pair in zip(POS, NEG, strict=True)
            for a, n in zip(pair, (3, 0.5), strict=True)
        ]
    )
    return q, p


def _cos(a: float, b: float) -> float:
    return math.cos(math.radians(a - b))


def _err(x: float, kind: str) -> float:
    return {"squared": x * x, "absolute": abs(x), "softplus": math.log1p(math.exp(-x))}[kind]


def _expected(target, in_batch: bool, kind: str) -> float:
    terms = []
    for i in range(2):
        m_own = _cos(Q[i], POS[i]) - _cos(Q[i], NEG[i])
        if in_batch:  # every negative of the batch, each pair with its own target
            for n in NEG:
                m = _cos(Q[i], POS[i]) - _cos(Q[i], n)
                t = (1 + _cos(POS[i], n)) / 2 if target == "adaptive" else target
                terms.append(_err(m - t, kind))
        elif target == "distributed":  # own margin, against the positive's targets over the batch
            terms += [_err(m_own - (1 + _cos(POS[i], n)) / 2, kind) for n in NEG]
        else:
            t = (1 + _cos(POS[i], NEG[i])) / 2 if target == "adaptive" else target
            terms.append(_err(m_own - t, kind))
    return sum(terms) / len(terms)


@pytest.mark.parametrize("kind", ["squared", "absolute", "softplus"])
@pytest.mark.parametrize(
    ("target", "in_batch"),
    [("adaptive", False), ("adaptive", True), ("distributed", False), (0.3, False), (0.3, True)],
)
def test_matches_hand_computed_values(target, in_batch: bool, kind: str) -> None:
    q, p = _batch()
    loss = AdaptiveMarginLoss(target=target, in_batch=in_batch, error=kind)
    assert loss(q, p).item() == pytest.approx(_expected(target, in_batch, kind), abs=1e-6)


def test_a_worked_example() -> None:
    # Query 0 alone: m = cos 30° − cos 90° = 0.8660; t = (1 + cos 60°) / 2 = 0.75.
    q, p = _batch()
    got = AdaptiveMarginLoss()(q[:1], p[:2]).item()
    assert got == pytest.approx((math.sqrt(3) / 2 - 0.75) ** 2, abs=1e-7)


def test_gradient_pushes_the_margin_towards_its_target() -> None:
    q, p = _batch()
    q.requires_grad_(True)
    loss = AdaptiveMarginLoss(error="absolute")
    before = loss(q, p)
    before.backward()
    with torch.no_grad():
        after = loss(q - 0.05 * q.grad, p)
    assert after < before


def test_negatives_per_query() -> None:
    assert AdaptiveMarginLoss().negatives_per_query(4, 3, 2) == 2  # G - 1
    assert AdaptiveMarginLoss(in_batch=True).negatives_per_query(4, 3, 2) == 16  # W*B*(G-1)
    assert AdaptiveMarginLoss(in_batch=True, cross_batch=False).negatives_per_query(4, 3, 2) == 8
    with pytest.raises(ValueError, match="group_size >= 2"):
        AdaptiveMarginLoss().negatives_per_query(4, 1, 2)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"error": "cubic"}, "error 'cubic': expected one of squared, absolute, softplus"),
        ({"target": "teacher"}, "target 'teacher'"),
        ({"target": True}, "target True"),
        ({"target": "distributed", "in_batch": True}, "cannot be combined with in_batch"),
    ],
)
def test_rejects_bad_options(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        AdaptiveMarginLoss(**kwargs)


def test_needs_a_hard_negative_per_query() -> None:
    q, p = _batch()
    with pytest.raises(
        ValueError, match=r">= 1 hard negative per query .*q \(2, 2\) and p \(2, 2\)"
    ):
        AdaptiveMarginLoss()(q, p[::2])
