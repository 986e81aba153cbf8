"""Naming a search's winner on the full corpus (``tuning.confirm``), and how the summary says it."""

from __future__ import annotations

import pytest

from raydr.tuning.confirm import confirm


def _candidates(subset: dict[str, float]) -> list[dict]:
    return [
        {"trial": t, "step": 10, "checkpoint": f"/ckpt/{t}", "subset": v} for t, v in subset.items()
    ]


def _full(values: dict[str, float], corpus: int = 40):
    """What validators return on the full corpus for each checkpoint path."""
    seen: list[tuple[str, int]] = []

    def validate(pairs):
        seen.extend(pairs)
        return [
            {"nDCG@10": values[path.rsplit("/", 1)[1]], "subset_size": corpus} for path, _ in pairs
        ]

    return validate, seen


def test_the_winner_is_named_on_the_full_corpus_with_both_ranks_and_kendall_tau() -> None:
    validate, seen = _full({"a": 0.50, "b": 0.62, "c": 0.40})
    out = confirm(_candidates({"a": 0.80, "b": 0.78, "c": 0.70}), "nDCG@10", "max", validate)
    assert sorted(seen) == [("/ckpt/a", 10), ("/ckpt/b", 10), ("/ckpt/c", 10)]
    assert out["winner"] == "b" and out["subset_winner"] == "a" and out["winner_changed"]
    ranks = {c["trial"]: (c["subset_rank"], c["full_rank"], c["full"]) for c in out["trials"]}
    assert ranks == {"a": (1, 2, 0.50), "b": (2, 1, 0.62), "c": (3, 3, 0.40)}
    # One discordant pair (a, b) of three: tau = (2 - 1) / 3.
    assert out["kendall_tau"] == pytest.approx(1 / 3)
    assert out["corpus_size"] == 40


def test_agreeing_rankings_and_minimisation() -> None:
    validate, _ = _full({"a": 0.3, "b": 0.2})
    out = confirm(_candidates({"a": 1.5, "b": 1.0}), "nDCG@10", "min", validate)
    assert out["winner"] == "b" and not out["winner_changed"] and out["kendall_tau"] == 1.0
    # One candidate: nothing to correlate.
    validate, _ = _full({"a": 0.3})
    assert confirm(_candidates({"a": 0.4}), "nDCG@10", "max", validate)["kendall_tau"] is None


def test_the_summary_table_shows_both_metrics_the_winner_and_the_validators_work() -> None:
    from raydr.tuning.summary import format_summary

    validate, _ = _full({"a": 0.50, "b": 0.62})
    conf = confirm(_candidates({"a": 0.80, "b": 0.78}), "nDCG@10", "max", validate)
    trials = [
        {
            "trial": t,
            "best_metric": s,
            "full_corpus_metric": f,
            "best_step": 10,
            "stopped_early": False,
            "last_training_step": 20,
            "config": {},
            "decision_lag_steps": {},
        }
        for t, s, f in (("a", 0.80, 0.50), ("b", 0.78, 0.62))
    ]
    text = format_summary(
        {
            "metric": "nDCG@10",
            "trials": trials,
            "trial_steps_run": 40,
            "trial_steps_without_scheduler": 40,
            "confirmation": conf,
            "validation": {
                "done": 9,
                "cancelled": 3,
                "failed": 0,
                "validator_seconds": 90.0,
                "validator_seconds_saved_estimate": 30.0,
            },
            "best_model": "/out/best_model",
            "plot": "/out/curves.png",
        }
    )
    assert "0.8000  0.5000" in text and "0.7800  0.6200" in text
    assert "winner on the full corpus (40 docs): b (the subset named a)" in text
    assert "Kendall tau of the top 2, subset vs full: -1.00" in text
    assert "9 checkpoints done, 3 cancelled, 0 failed; 90 validator-seconds (about 30 saved" in text


@pytest.mark.parametrize("mode", ["max", "min"])
def test_a_tie_on_the_full_corpus_keeps_the_subsets_order(mode: str) -> None:
    """Pins ties on the full corpus falling back to the subset ranking, not to the order the
    candidates came in: here they come in the reverse of their subset order, and a and b tie
    on the full corpus, so a (first on the subset) must stay the winner, ranked above b."""
    subset = {"c": 0.70, "b": 0.78, "a": 0.80} if mode == "max" else {"c": 0.9, "b": 0.5, "a": 0.4}
    validate, _ = _full({"a": 0.55, "b": 0.55, "c": 0.10 if mode == "max" else 0.99})
    out = confirm(_candidates(subset), "nDCG@10", mode, validate)
    assert [c["trial"] for c in out["trials"]] == ["a", "b", "c"]
    ranks = {c["trial"]: (c["subset_rank"], c["full_rank"]) for c in out["trials"]}
    assert ranks == {"a": (1, 1), "b": (2, 2), "c": (3, 3)}
    assert out["winner"] == out["subset_winner"] == "a" and not out["winner_changed"]


def test_kendall_tau_is_none_when_a_ranking_is_all_ties() -> None:
    """Pins a NaN tau becoming None: scipy's tau is NaN when either ranking has no order (all
    equal); NaN is not valid JSON for the summary and compares false with everything."""
    validate, _ = _full({"a": 0.5, "b": 0.5, "c": 0.5})
    out = confirm(_candidates({"a": 0.8, "b": 0.7, "c": 0.6}), "nDCG@10", "max", validate)
    assert out["kendall_tau"] is None
    assert out["winner"] == "a"  # all tied on the full corpus: the subset's order stands
    validate, _ = _full({"a": 0.3, "b": 0.5})
    out = confirm(_candidates({"a": 0.7, "b": 0.7}), "nDCG@10", "max", validate)
    assert out["kendall_tau"] is None and out["winner"] == "b"
