"""Paired significance of one system against another over the same queries (``raydr compare``).

Two tests from scipy, both over per-query values of one measure (``metrics.per_query``): the
paired t-test, the usual one in IR papers, and the Wilcoxon signed-rank test, which does not
assume the differences are normal. No test statistic is computed here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from raydr.errors import RaydrError


def paired(baseline: Mapping[str, float], other: Mapping[str, float]) -> dict[str, Any]:
    """``other`` against ``baseline``, query by query (both keyed by the same query ids).

    → means, their difference, per-query wins / ties / losses, and two-sided p-values."""
    from scipy import stats

    if set(baseline) != set(other):
        raise RaydrError(
            f"paired test: the systems were scored on different queries "
            f"({len(baseline)} against {len(other)})"
        )
    qids = sorted(baseline)
    a = np.array([baseline[q] for q in qids], dtype=np.float64)
    b = np.array([other[q] for q in qids], dtype=np.float64)
    diff = b - a
    differs = bool(np.any(diff != 0))
    return {
        "queries": len(qids),
        "baseline": float(a.mean()),
        "mean": float(b.mean()),
        "diff": float(diff.mean()),
        "wins": int((diff > 0).sum()),
        "ties": int((diff == 0).sum()),
        "losses": int((diff < 0).sum()),
        "t_test_p": _t_test_p(stats, a, b, diff),
        # Identical systems: nothing to test (scipy would return nan or fail).
        "wilcoxon_p": float(stats.wilcoxon(b, a).pvalue) if differs else 1.0,
    }


def _t_test_p(stats, a: np.ndarray, b: np.ndarray, diff: np.ndarray) -> float:
    if not np.any(diff != 0):
        return 1.0
    if np.all(diff == diff[0]):
        return 0.0  # the same gain on every query: t is infinite (scipy warns and says nan)
    return float(stats.ttest_rel(b, a).pvalue)


def within_one_standard_error(best: Mapping[str, float], other: Mapping[str, float]) -> bool:
    """``other`` trails ``best`` by at most one standard error of their per-query difference
    (the "one-standard-error rule" of model selection: among choices that the evaluation
    cannot tell from the best, take the simplest)."""
    if set(best) != set(other):
        raise RaydrError("one-standard-error rule: the systems were scored on different queries")
    qids = sorted(best)
    diff = np.array([best[q] - other[q] for q in qids], dtype=np.float64)
    if len(diff) < 2 or not np.any(diff):
        return bool(diff.mean() <= 0) if len(diff) else True
    return bool(diff.mean() <= diff.std(ddof=1) / np.sqrt(len(diff)))
