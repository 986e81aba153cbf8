"""The CLI end to end on a tiny dataset: real Parquet, a real tiny BERT, real faiss and bm25s."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raydr.cli import main


def _job(tmp_path: Path, dataset: Path, model: Path | str = "all-MiniLM-L6-v2") -> Path:
    job = tmp_path / "job.yaml"
    job.write_text(
        f"name: t\noutput_dir: {tmp_path / 'runs'}\nmodel:\n  name: {model}\n"
        f"data:\n  path: {dataset}\n  split: test\neval:\n  depth: 20\n  batch_size: 4\n"
    )
    return job


def test_evaluate_writes_metrics_and_run(
    tmp_path: Path, tiny_dataset: Path, tiny_model_dir: Path, capsys
) -> None:
    job = _job(tmp_path, tiny_dataset, tiny_model_dir)
    assert main(["evaluate", str(job), "-q", "index.backend=hnswlib"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("nDCG@10")  # primary metric first
    metrics = json.loads((tmp_path / "runs/t/metrics.json").read_text())
    assert metrics["primary_metric"] == "nDCG@10"
    assert set(metrics["metrics"]) == {"nDCG@10", "RR@10", "R@100", "R@1000", "AP"}
    assert all(0.0 <= v <= 1.0 for v in metrics["metrics"].values())
    assert metrics["num_queries"] == 5 and metrics["num_docs"] == 40
    run = (tmp_path / "runs/t/run.trec").read_text().splitlines()
    assert len(run) == 5 * 20  # depth 20 per query


def test_bm25_ranks_the_query_topic_first(tmp_path: Path, tiny_dataset: Path, capsys) -> None:
    job = _job(tmp_path, tiny_dataset)
    assert main(["bm25", str(job), "-q"]) == 0
    metrics = json.loads((tmp_path / "runs/t/bm25/metrics.json").read_text())
    # Topics have disjoint vocabularies, so all judged docs are in the top 8 of their query.
    assert metrics["metrics"]["R@100"] == pytest.approx(1.0)
    topics = {"q0": "bio", "q1": "astro", "q2": "geo", "q3": "code", "q4": "food"}
    for line in (tmp_path / "runs/t/bm25/run.trec").read_text().splitlines():
        qid, _, doc, rank, *_ = line.split()
        assert int(rank) > 8 or doc.startswith(topics[qid])


def test_user_errors_exit_2_with_one_line(tmp_path: Path, tiny_beir: Path, capsys) -> None:
    job = _job(tmp_path, tiny_beir)  # a raw BEIR folder, not imported
    assert main(["evaluate", str(job), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("raydr: error:") and "import-beir" in err
    assert "Traceback" not in err
    assert main(["evaluate", str(job), "model.poolng=cls"]) == 2
    assert "did you mean 'pooling'" in capsys.readouterr().err
    assert main(["import-beir", str(tmp_path / "missing"), str(tmp_path / "out")]) == 2
    assert "missing" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["evaluate", str(job), "--bogus"])


def test_validate_takes_overrides_after_the_checkpoints(tmp_path: Path, capsys) -> None:
    job = tmp_path / "job.yaml"
    job.write_text("data:\n  path: nowhere\n")
    ckpt = tmp_path / "ckpt"
    # The override must reach the config (its error names it), not be taken for a folder.
    assert main(["validate", str(job), str(tmp_path / "missing"), "model.poolng=cls"]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'pooling'" in err and "checkpoint folder not found" not in err
    ckpt.mkdir()
    assert main(["validate", str(job), str(ckpt), "validation.num_actors=0"]) == 2
    assert "validation.num_actors" in capsys.readouterr().err
