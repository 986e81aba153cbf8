"""AdaptiveMarginLoss against values worked out by hand from angles on the unit circle.

Every embedding is a 2-d vector at a known angle (scaled by an arbitrary norm, which cosine
similarity must ignore), so each similarity is cos(angle difference) and each expected loss is
a few lines of trigonometry, independent of the module's tensor code.
"""

from __future__ import annotations

import math
import os
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

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


def _expected(
    target,
    in_batch: bool,
    kind: str,
    queries: tuple[int, ...] = (0, 1),
    drop: frozenset = frozenset(),
) -> float:
    """The mean error over ``queries``' pairs; ``drop``: (query, negative) pairs left out."""
    terms = []
    for i in queries:
        m_own = _cos(Q[i], POS[i]) - _cos(Q[i], NEG[i])
        if in_batch:  # every negative of the batch, each pair with its own target
            for j, n in enumerate(NEG):
                if (i, j) in drop:
                    continue
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


# Judged docs for the mask tests. Doc ids of the batch rows (pos 0, neg 0, pos 1, neg 1), and
# each query's judged-relevant docs (padded with -1): query 1's hard negative, doc 21, is
# judged relevant to query 0, so the pair (query 0, NEG[1]) must be left out; query 1 keeps
# both of its pairs. Asymmetric on purpose: a transposed mask would drop the wrong pair.
P_DOC = torch.tensor([10, 11, 20, 21])
Q_POS = torch.tensor([[10, 21], [20, -1]])
DROPPED = frozenset({(0, 1)})


@pytest.mark.parametrize("target", ["adaptive", 0.3])
def test_in_batch_leaves_out_negatives_judged_relevant_to_the_query(target) -> None:
    """Pins the judged-passage mask (``p_doc`` / ``q_pos``) in one process: a loss that ignored
    it would push a query away from a passage judged relevant to it."""
    q, p = _batch()
    loss = AdaptiveMarginLoss(target=target, in_batch=True, cross_batch=False)
    want = _expected(target, True, "squared", drop=DROPPED)
    assert loss(q, p, P_DOC, Q_POS).item() == pytest.approx(want, abs=1e-6)
    unmasked = _expected(target, True, "squared")
    assert loss(q, p).item() == pytest.approx(unmasked, abs=1e-6)
    assert abs(want - unmasked) > 1e-2  # the mask matters on this batch


def test_a_batch_whose_every_negative_is_judged_gives_zero_not_nan() -> None:
    """Every pair masked (the one negative is judged relevant to the one query): the loss is 0
    with zero gradients; an empty mean would be NaN and poison the all-reduced weights."""
    q = torch.tensor([[1.0, 0.0]], requires_grad=True)
    p = torch.tensor([[0.8, 0.6], [0.6, 0.8]], requires_grad=True)
    loss = AdaptiveMarginLoss(in_batch=True, cross_batch=False)
    value = loss(q, p, torch.tensor([10, 11]), torch.tensor([[10, 11]]))
    value.backward()
    assert value.item() == 0.0
    assert torch.equal(q.grad, torch.zeros_like(q)) and torch.equal(p.grad, torch.zeros_like(p))


def _masked_worker(rank: int, store: str, out: str) -> None:
    """Rank ``rank`` of a 2-process gloo group: query ``rank`` and its group, cross batch."""
    torch.set_num_threads(1)  # two processes on a small machine
    dist.init_process_group(
        "gloo", init_method=f"file://{store}", rank=rank, world_size=2, timeout=timedelta(60)
    )
    try:
        q, p = _batch()
        own, rows = slice(rank, rank + 1), slice(2 * rank, 2 * rank + 2)
        loss = AdaptiveMarginLoss(in_batch=True, cross_batch=True)
        masked = loss(q[own], p[rows], P_DOC[rows], Q_POS[own]).item()
        unmasked = loss(q[own], p[rows]).item()
        Path(out, f"rank{rank}").write_text(f"{masked!r} {unmasked!r}")
        dist.barrier()  # both ranks are done with the group
    finally:
        dist.destroy_process_group()
    # Leave without the interpreter's teardown: gloo's threads were seen to abort there
    # ("terminate called without an active exception", 1 run in 15), after the work was done.
    os._exit(0)


def _run_two_workers(tmp_path: Path) -> list[tuple[float, float]]:
    """``_masked_worker`` on 2 spawned processes (each imports torch afresh: a fork of a pytest
    process that has run Ray may inherit its threads' locks) → each
    rank's (masked, unmasked) loss. A worker's exception is raised here; a hang fails."""
    workers = mp.start_processes(
        _masked_worker,
        args=(str(tmp_path / "store"), str(tmp_path)),
        nprocs=2,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + 120
    while not workers.join(timeout=1):
        if time.monotonic() > deadline:
            for proc in workers.processes:
                proc.kill()
            pytest.fail("the 2-process gloo group did not finish in 120 s")
    texts = [(tmp_path / f"rank{r}").read_text().split() for r in range(2)]
    return [(float(masked), float(unmasked)) for masked, unmasked in texts]


def test_in_batch_mask_holds_across_two_workers(tmp_path: Path) -> None:
    """Pins the mask across workers: query 0's judged doc is a hard negative on the *other*
    worker, so only the gathered doc ids can drop it (a real 2-process gloo group)."""
    got = _run_two_workers(tmp_path)
    for rank, (masked, unmasked) in enumerate(got):
        want = _expected("adaptive", True, "squared", queries=(rank,), drop=DROPPED)
        assert masked == pytest.approx(want, abs=1e-6), f"rank {rank}"
        assert unmasked == pytest.approx(_expected("adaptive", True, "squared", (rank,)), abs=1e-6)
    assert abs(got[0][0] - got[0][1]) > 1e-2  # rank 0's mask matters
