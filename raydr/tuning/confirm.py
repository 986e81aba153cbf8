"""A search's winner, confirmed on the full corpus.

Every checkpoint is validated on a sampled corpus subset (Asyncval): cheap enough to score them
all while trials train, and good enough to stop the clearly worse ones. Close trials, though,
can swap places between the subset and the whole corpus, and the winner is what a user deploys.
So after the search the best checkpoint of each of the top-k trials (by the subset metric) is
validated again on the whole corpus of the validation split, and the winner is named on that.
Kendall's tau between the two rankings says how far the subset could be trusted.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypedDict

# (checkpoint path, step) pairs → the validator's flat metrics dict for each, in order.
Validate = Callable[[list[tuple[str, int]]], list[dict[str, Any]]]


class Candidate(TypedDict, total=False):
    trial: str
    step: int
    checkpoint: str
    subset: float  # the metric on the validation subset
    full: float  # the metric on the full corpus
    subset_rank: int  # 1 = best
    full_rank: int


def confirm(
    candidates: list[Candidate], metric: str, mode: str, validate: Validate
) -> dict[str, Any]:
    """Validate each candidate on the full corpus and rank both ways. ``candidates``: one per
    trial (its best checkpoint on the subset). → {"trials": candidates by full rank, with both
    metrics and ranks; "kendall_tau" (None below 2 candidates or when a ranking is all ties);
    "winner", "subset_winner": trial ids; "winner_changed"; "corpus_size"}."""
    from scipy.stats import kendalltau

    sign = 1.0 if mode == "max" else -1.0
    by_subset = sorted(candidates, key=lambda c: -sign * c["subset"])
    measured = validate([(c["checkpoint"], c["step"]) for c in by_subset])
    for rank, (cand, metrics) in enumerate(zip(by_subset, measured, strict=True), start=1):
        cand["full"] = float(metrics[metric])
        cand["subset_rank"] = rank
    # Ties on the full corpus keep the subset's order (sorted is stable).
    by_full = sorted(by_subset, key=lambda c: -sign * c["full"])
    for rank, cand in enumerate(by_full, start=1):
        cand["full_rank"] = rank
    tau = None
    if len(by_subset) >= 2:
        value = kendalltau([c["subset"] for c in by_subset], [c["full"] for c in by_subset])
        tau = None if math.isnan(value.statistic) else float(value.statistic)
    return {
        "metric": metric,
        "trials": by_full,
        "kendall_tau": tau,
        "winner": by_full[0]["trial"],
        "subset_winner": by_subset[0]["trial"],
        "winner_changed": by_full[0]["trial"] != by_subset[0]["trial"],
        "corpus_size": measured[0].get("subset_size") if measured else None,
    }
