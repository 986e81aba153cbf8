from __future__ import annotations

import math
from pathlib import Path

import pytest

from raydr.retrieval.metrics import drop_identical_ids, score, write_trec_run

QRELS = {"q1": {"d1": 1, "d3": 1}, "q2": {"d5": 2, "d6": 1}, "q3": {"d9": 1}}
RUN = {
    "q1": {"d1": 0.9, "d2": 0.8, "d3": 0.7},
    "q2": {"d6": 0.9, "d5": 0.5, "d7": 0.1},
    # q3 retrieved nothing: trec_eval -c scores it 0 rather than dropping it.
}


def test_hand_computed_values_match_trec_eval_semantics() -> None:
    m = score(QRELS, RUN, ["nDCG@10", "RR@10", "AP", "R@2", "P@2"])
    # q1: relevant at ranks 1 and 3. q2: graded, linear gains (trec_eval), rel 1 at 1, rel 2 at 2.
    ndcg_q1 = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    ndcg_q2 = (1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3))
    assert m["nDCG@10"] == pytest.approx((ndcg_q1 + ndcg_q2 + 0) / 3, abs=1e-6)
    assert m["RR@10"] == pytest.approx((1 + 1 + 0) / 3, abs=1e-6)
    assert m["AP"] == pytest.approx(((1 + 2 / 3) / 2 + 1 + 0) / 3, abs=1e-6)
    assert m["R@2"] == pytest.approx((0.5 + 1 + 0) / 3, abs=1e-6)
    assert m["P@2"] == pytest.approx((0.5 + 1 + 0) / 3, abs=1e-6)


def test_identical_ids_dropped() -> None:
    run = drop_identical_ids({"q1": {"q1": 5.0, "d1": 1.0}})
    assert run == {"q1": {"d1": 1.0}}


def test_trec_run_file(tmp_path: Path) -> None:
    path = tmp_path / "run.trec"
    write_trec_run(path, RUN, tag="t")
    lines = path.read_text().splitlines()
    assert lines[0] == "q1 Q0 d1 1 0.900000 t"
    assert lines[3] == "q2 Q0 d6 1 0.900000 t"
    assert len(lines) == 6
    assert not list(tmp_path.glob(".*tmp"))  # no temp file left behind
