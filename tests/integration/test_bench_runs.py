"""The benchmark commands that run searches and training, end to end on the tiny model and a
real local Ray: each writes its JSON and PNG, with figures that hang together."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import tiny_search_tree

from raydr.cli import main

pytestmark = pytest.mark.ray


def test_bench_search_compares_asha_with_the_unscheduled_search(
    tmp_path: Path, tiny_dataset: Path, tiny_model_dir: Path, negatives: Path
) -> None:
    tree = tiny_search_tree("tiny-bench", tmp_path, tiny_dataset, tiny_model_dir, negatives)
    tree["validation"]["sampling"] = {"strategy": "random", "size": 20}
    tree["tune"]["stopped_checkpoints"] = "cancel"
    job = tmp_path / "search.yaml"
    job.write_text(yaml.safe_dump(tree))
    out = tmp_path / "search.json"
    assert main(["bench", "search", str(job), "--out", str(out)]) == 0
    payload = json.loads(out.read_text())
    runs = {r["policy"]: r for r in payload["runs"]}
    asha, free = runs["asha"], runs["unscheduled"]
    # Unscheduled, every trial trains to its end; ASHA stopped the frozen one.
    assert free["trial_steps_run"] == free["trial_steps_without_scheduler"] == 40
    assert not any(t["stopped_early"] for t in free["trials"])
    stopped = [t["config"] for t in asha["trials"] if t["stopped_early"]]
    assert stopped == [{"training.lr": 1e-9}], asha["trials"]
    frozen = next(t for t in asha["trials"] if t["stopped_early"])
    assert asha["trial_steps_run"] == 20 + frozen["steps_run"] < 40, asha["trials"]
    # Both named their winner on the full corpus (40 docs) and scored it once on test.
    for run in (asha, free):
        assert run["winner_named_on"] == "full corpus", run["confirmation"]
        assert run["confirmation"]["corpus_size"] == 40
        assert run["winner"] == {"training.lr": 3e-3}, run["confirmation"]
        assert 0 < run["winner_test"]["nDCG@10"] <= 1
        assert run["validation"]["stopped_checkpoints"] == "cancel"
    comparison = payload["comparison"]
    assert comparison["same_winner"] is True
    assert comparison["trial_steps_saved"] == pytest.approx(1 - asha["trial_steps_run"] / 40)
    assert payload["machine"]["cpu"] and out.with_suffix(".png").is_file()


def test_bench_gpu_runs_in_cpu_mode_and_says_no_gpu_was_lent(
    tmp_path: Path, tiny_dataset: Path, tiny_model_dir: Path, negatives: Path
) -> None:
    from raydr.bench.gpu import NO_GPU

    tree = tiny_search_tree("tiny-gpu", tmp_path, tiny_dataset, tiny_model_dir, negatives)
    del tree["tune"]
    job = tmp_path / "train.yaml"
    job.write_text(yaml.safe_dump(tree))
    out = tmp_path / "gpu.json"
    argv = ["bench", "gpu", str(job), "--steps", "4", "--every", "2", "--passages", "16"]
    assert main([*argv, "--out", str(out)]) == 0
    payload = json.loads(out.read_text())
    assert payload["gpu_lent"] is False and payload["note"] == NO_GPU
    enc = payload["encode"]
    # A fraction, not a bound: on a CPU without native bf16 the matmul "peak" is emulated and
    # slower than encoding, so the ratio may exceed 1 there.
    assert enc["device"] == "cpu" and 0 < enc["bf16_fraction_of_bf16_matmul"] < float("inf")
    assert enc["bf16_min_cosine_vs_fp32"] > 0.9
    runs = {r["variant"]: r for r in payload["training"]}
    # Every checkpoint (steps 2 and 4) validated inline and by the pool; none alone.
    assert [runs[v]["validations"] for v in ("alone", "inline", "pool")] == [0, 2, 2]
    # The pool's two validators each reserved a quarter of the (logical) GPU.
    assert "validation.num_gpus=0.25" in runs["pool"]["overrides"]
    assert "validation.num_actors=2" in runs["pool"]["overrides"]
    assert all(r["steps_per_s"] > 0 for r in runs.values())
    assert set(payload["ratios"]) == {
        "steps_per_s inline / alone",
        "steps_per_s pool / alone",
        "time_to_last_metric inline / pool",
    }
    # Until the last metric: the training loop at least (the pool may finish after it).
    assert payload["time_to_last_metric_s"]["pool"] >= 0.99 * runs["pool"]["training_loop_s"]


def test_bench_scale_measures_the_smallest_size_and_cleans_up(tmp_path: Path) -> None:
    out, work = tmp_path / "scale.json", tmp_path / "work"
    argv = ["bench", "scale", "--sizes", "3000", "--queries", "64", "--steps", "2"]
    assert main([*argv, "--work", str(work), "--out", str(out)]) == 0
    payload = json.loads(out.read_text())
    assert out.with_suffix(".png").stat().st_size > 0
    (size,) = payload["sizes"]
    assert size["passages"] == 3000 and payload["machine"]["cpu"]
    now, before = size["train_worker"], size["train_worker_holding_the_corpus"]
    assert now["peak_rss_mb"] > 0 and before["peak_rss_mb"] > 0
    assert size["store_build"]["disk_mb"] > 0 and size["bm25_mining"]["s"] > 0
    # One checkpoint through pools of 1, 2 and 4 validators: whole, then scattered.
    timed = size["full_corpus_metric"]
    assert [timed[k]["shards"] for k in ("1", "2", "4")] == [1, 2, 4]
    assert timed["4"]["metric_diff"] < 1e-4 and timed["4"]["validator_peak_rss_mb"] > 0
    # The ledger at its 1,000th checkpoint: the pool's state is in memory, the file read once.
    ledger = payload["ledger"]
    assert ledger["file_reads_by_the_1000th_submit"] == 0
    assert ledger["lookup_ms_in_memory"] < ledger["lookup_ms_rereading_the_file"]
    assert not work.exists(), "the corpora and checkpoints were left on disk"
