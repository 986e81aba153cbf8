"""Refit on train + dev (``raydr train --refit``), without Ray: the union of splits, the plan a
finished run's ledger gives (split, scaled stop step, schedule, no validation), dev's negatives
added without touching training's, and one line for each input a refit cannot take."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import tiny_job

from raydr import config, refit
from raydr.cli import main
from raydr.config import BM25Config
from raydr.data.groups import load_negatives
from raydr.data.tables import load_qrels
from raydr.errors import RaydrError
from raydr.mining.bm25_negatives import mine_bm25_negatives
from raydr.validation.ledger import Ledger, done_row


@pytest.fixture
def job(tmp_path: Path, dev_dataset: Path, tiny_model_dir: Path) -> config.RaydrConfig:
    """Trains on test's 3 queries (2 workers x batch 1: 1 step an epoch, 4 epochs) with BM25
    negatives mined for them alone, selects on dev; its ledger picked step 2 of 4."""
    negatives = tmp_path / "negatives.parquet"
    mine_bm25_negatives(dev_dataset, "test", negatives, depth=3, cfg=BM25Config())
    tree = tiny_job(
        "fit",
        tmp_path,
        dev_dataset,
        tiny_model_dir,
        negatives,
        training={"batch_size": 1, "epochs": 4},
        validation={"split": "dev"},
    )
    cfg = config.build(tree, "t")
    ledger = Ledger.for_run(cfg)
    for step, score in ((1, 0.5), (2, 0.9), (3, 0.7), (4, 0.8)):
        ledger.append(done_row("fit", step, f"/gone/{step}", {"nDCG@10": score}))
    return cfg


def test_a_split_union_holds_both_splits_judgements(dev_dataset: Path) -> None:
    test, dev = load_qrels(dev_dataset, "test"), load_qrels(dev_dataset, "dev")
    assert load_qrels(dev_dataset, "test+dev") == {**test, **dev}
    assert len(test) == 3 and len(dev) == 2
    for bad, expected in (("test+nope", "no qrels split 'nope'"), ("dev+dev", "twice")):
        with pytest.raises(RaydrError, match=expected):
            load_qrels(dev_dataset, bad)


def test_the_plan_trains_on_train_and_dev_to_the_selected_step_scaled(
    job: config.RaydrConfig, dev_dataset: Path, tmp_path: Path
) -> None:
    assert main(["mine-negatives", str(_yaml(job, tmp_path)), "--refit", "--depth", "3"]) == 0
    cfg, record = refit.plan(job)
    assert cfg.name == "fit-refit" and cfg.training.split == "test+dev"
    assert cfg.validation.enabled is False
    # 3 queries → 1 step an epoch; 5 → 2: dev's step 2 (two passes) becomes step 4 of 8.
    assert record["selected_step"] == 2 and record["selected_score"] == 0.9
    assert record["steps_per_epoch"] == {"trained": 1, "refit": 2}
    assert record["queries"] == {"trained": 3, "refit": 5}
    assert (record["stop_at"], cfg.training.stop_at, record["schedule_steps"]) == (4, 4, 8)
    # Everything else is the job's: the same model, seed, learning rate and epochs.
    same = ("model", "seed", "data")
    assert all(getattr(cfg, k) == getattr(job, k) for k in same)
    assert (cfg.training.lr, cfg.training.epochs) == (job.training.lr, job.training.epochs)
    assert "to step 4 of a 8-step schedule" in refit.describe(record)
    written = refit.write_record(cfg, record)
    assert written == cfg.paths.run_dir / "refit.json" and written.is_file()


def test_max_steps_scale_with_the_data(job: config.RaydrConfig, tmp_path: Path) -> None:
    assert main(["mine-negatives", str(_yaml(job, tmp_path)), "--refit"]) == 0
    tree = job.model_dump(mode="json")
    tree["training"]["max_steps"] = 3
    cfg, record = refit.plan(config.build(tree, "t"))
    assert (cfg.training.max_steps, record["stop_at"], record["schedule_steps"]) == (6, 4, 6)


def test_mining_dev_for_a_refit_leaves_trainings_negatives_as_they_were(
    job: config.RaydrConfig, dev_dataset: Path, tmp_path: Path
) -> None:
    path = job.training.negatives
    before = load_negatives(path)
    assert main(["mine-negatives", str(_yaml(job, tmp_path)), "--refit", "--depth", "3"]) == 0
    after = load_negatives(path)
    assert {q: after[q] for q in before} == before
    assert set(after) == set(load_qrels(dev_dataset, "test+dev"))
    ids = pq.read_table(path)["query_id"].to_pylist()
    assert ids == sorted(ids)


def test_a_refit_without_dev_negatives_says_how_to_mine_them(job: config.RaydrConfig) -> None:
    with pytest.raises(RaydrError, match=r"2 'dev' queries .*raydr mine-negatives CONFIG --refit"):
        refit.plan(job)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"validation": {"split": "test"}}, "validation.split 'test' is data.split"),
        ({"validation": {"enabled": False}}, "no step was selected on dev"),
        ({"training": {"split": "test+dev"}}, "already holds validation.split 'dev'"),
        ({"name": "never-ran"}, "no validated run of 'never-ran'"),
    ],
)
def test_a_refit_it_cannot_make_is_one_line(
    job: config.RaydrConfig, change: dict, expected: str, tmp_path: Path
) -> None:
    tree = job.model_dump(mode="json")
    for key, value in change.items():
        tree[key] = tree[key] | value if isinstance(value, dict) else value
    bad = config.build(tree, "t")
    with pytest.raises(RaydrError, match=expected):
        refit.plan(bad)
    assert not (bad.paths.run_dir.parent / "never-ran").exists()
    # The same at the command line: one line, exit 2, nothing trained.
    yaml_path = tmp_path / "bad.yaml"
    yaml_path.write_text(config.build(tree, "t").model_dump_json())
    assert main(["train", str(yaml_path), "--refit"]) == 2


def _yaml(cfg: config.RaydrConfig, tmp_path: Path) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(cfg.model_dump_json())  # JSON is YAML
    return path
