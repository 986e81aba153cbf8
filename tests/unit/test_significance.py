"""Per-query scores and paired tests (``raydr compare``): the per-query values average to the
metric raydr reports, a system that ranks every relevant doc higher is significantly better,
identical systems are not, and a broken run file is one line naming its line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import tiny_tree

from raydr.cli import main
from raydr.data.tables import load_qrels
from raydr.errors import RaydrError
from raydr.retrieval.metrics import per_query, score, write_trec_run
from raydr.retrieval.significance import paired


def _ranked(qrels: dict, relevant_at: int, n_docs: int = 20) -> dict:
    """A run that puts each query's judged docs from rank ``relevant_at`` on."""
    run = {}
    for q, judged in qrels.items():
        docs = [f"x{i}" for i in range(n_docs)]
        for offset, d in enumerate(sorted(judged)):
            docs.insert(relevant_at - 1 + offset, d)
        run[q] = {d: float(len(docs) - r) for r, d in enumerate(docs)}
    return run


def test_per_query_values_average_to_the_score_and_missing_queries_count_zero() -> None:
    qrels = {f"q{i}": {f"d{i}": 1} for i in range(30)}
    run = _ranked(qrels, relevant_at=3)
    del run["q0"]  # lost by the system: 0, as trec_eval -c
    values = per_query(qrels, run, ["nDCG@10", "RR@10"])
    assert set(values["nDCG@10"]) == set(qrels) and values["RR@10"]["q0"] == 0.0
    assert values["RR@10"]["q1"] == pytest.approx(1 / 3)
    mean = score(qrels, run, ["nDCG@10"])["nDCG@10"]
    assert mean == pytest.approx(sum(values["nDCG@10"].values()) / 30)


def test_a_better_system_is_significant_and_an_identical_one_is_not() -> None:
    qrels = {f"q{i}": {f"d{i}": 1} for i in range(30)}
    worse = per_query(qrels, _ranked(qrels, relevant_at=4), ["RR@10"])["RR@10"]
    better = dict(per_query(qrels, _ranked(qrels, relevant_at=1), ["RR@10"])["RR@10"])
    better["q0"] = 0.0  # one loss, so the test is not trivially exact
    result = paired(worse, better)
    assert (result["wins"], result["ties"], result["losses"]) == (29, 0, 1)
    assert result["diff"] == pytest.approx((29 * (1 - 0.25) - 0.25) / 30)
    assert result["t_test_p"] < 1e-6 and result["wilcoxon_p"] < 1e-4
    same = paired(worse, worse)
    assert same["diff"] == 0 and same["t_test_p"] == 1.0 and same["wilcoxon_p"] == 1.0
    with pytest.raises(RaydrError, match="different queries"):
        paired(worse, {"q0": 1.0})


@pytest.mark.filterwarnings("error::RuntimeWarning")  # scipy's on a constant difference
def test_compare_reads_run_files_on_the_jobs_qrels(
    tmp_path: Path, tiny_dataset: Path, tiny_model_dir: Path, capsys
) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(tiny_tree("cmp", tmp_path, tiny_dataset, tiny_model_dir)))
    qrels = load_qrels(tiny_dataset, "test")
    runs = {}
    for name, at in (("base", 6), ("good", 1)):
        runs[name] = tmp_path / f"{name}.trec"
        write_trec_run(runs[name], _ranked(qrels, relevant_at=at))
    out = tmp_path / "cmp.json"
    argv = ["compare", str(job), "--baseline", str(runs["base"])]
    assert (
        main([*argv, "--run", str(runs["good"]), "--run", str(runs["base"]), "--out", str(out)])
        == 0
    )
    good, same = json.loads(out.read_text())["runs"]
    assert good["queries"] == len(qrels) == 5 and good["wins"] == 5 and good["diff"] > 0.3
    assert good["mean"] == pytest.approx(1.0)  # every judged doc on top
    assert good["t_test_p"] < 0.01 and good["wilcoxon_p"] == pytest.approx(0.0625)  # n = 5
    assert same["diff"] == 0 and same["wilcoxon_p"] == 1.0
    capsys.readouterr()
    broken = tmp_path / "broken.trec"
    broken.write_text("q1 Q0 d1 1 0.5 t\nq2 Q0 d2\n")
    assert main([*argv, "--run", str(broken)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("raydr: error:") and "broken.trec:2:" in line


def test_the_one_standard_error_rule_keeps_what_dev_cannot_tell_from_the_best() -> None:
    from raydr.retrieval.significance import within_one_standard_error

    qids = [f"q{i}" for i in range(100)]
    best = {q: 0.8 for q in qids}
    noisy = {q: 0.8 + (0.3 if i % 2 else -0.31) for i, q in enumerate(qids)}  # -0.005, se 0.03
    worse = {q: 0.8 - (0.05 if i % 10 else 0.0) for i, q in enumerate(qids)}  # -0.045, se 0.0015
    assert within_one_standard_error(best, noisy) and within_one_standard_error(best, best)
    assert not within_one_standard_error(best, worse)
    assert within_one_standard_error(best, {q: 0.9 for q in qids})  # better than the best
