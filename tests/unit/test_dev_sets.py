"""Several dev sets (``validation.also``): a validator scores each checkpoint on every one, the
primary metric is their weighted mean with the parts beside it, the best checkpoint is what
the weights say, and a dev set that cannot serve is one line before training."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import merged, ruined_copy, tiny_tree, write_checkpoint

from raydr import config
from raydr.errors import RaydrError
from raydr.evaluate import evaluate
from raydr.validation.ledger import Ledger, done_row
from raydr.validation.report import best_row, curves, plot_curves
from raydr.validation.validator import Validator

TOPICS = ["bio", "astro", "geo", "code", "food"]  # conftest's, in order


@pytest.fixture(scope="module")
def swapped(tiny_beir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny collection with every query judged to the next topic's docs: a model that
    ranks a query's own topic first does badly here."""
    from raydr.data.beir import import_beir

    raw = tmp_path_factory.mktemp("swapped") / "raw"
    shutil.copytree(tiny_beir, raw)
    rows = [f"q{t}\t{TOPICS[(t + 1) % 5]}-{i}\t1\n" for t in range(5) for i in (0, 1)]
    (raw / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(rows))
    out = raw.parent / "swapped"
    import_beir(raw, out)
    return out


def _cfg(tmp_path: Path, dataset: Path, model: Path, **validation):
    tree = merged(tiny_tree("devs", tmp_path, dataset, model), {"validation": validation})
    return config.build(tree, "t")


def test_the_primary_metric_is_the_weighted_mean_and_the_weights_choose_the_checkpoint(
    tmp_path: Path, tiny_dataset: Path, tiny_model_dir: Path, swapped: Path
) -> None:
    plain = _cfg(tmp_path, tiny_dataset, tiny_model_dir)
    good = write_checkpoint(tmp_path / "ckpts", tiny_model_dir, 1, plain)
    # A ruined copy: near chance on both sets, so better than `good` where `good` is wrong.
    ruined = ruined_copy(good, tmp_path / "ruined", scale=3.0)
    alone = {
        (name, data): evaluate(_cfg(tmp_path, data, tiny_model_dir), str(path)).metrics
        for name, path in (("good", good), ("ruined", ruined))
        for data in (tiny_dataset, swapped)
    }
    assert alone["good", tiny_dataset]["nDCG@10"] > alone["ruined", tiny_dataset]["nDCG@10"]
    assert alone["good", swapped]["nDCG@10"] < alone["ruined", swapped]["nDCG@10"]

    chosen = {}
    for w_main, w_other in ((1.0, 0.1), (0.1, 1.0)):
        also = [{"path": str(swapped), "split": "test", "weight": w_other, "name": "other"}]
        cfg = _cfg(tmp_path, tiny_dataset, tiny_model_dir, weight=w_main, also=also)
        validator = Validator(cfg, None)
        rows = []
        for step, (name, path) in enumerate((("good", good), ("ruined", ruined)), start=1):
            metrics = validator.validate(str(path), step)
            mine, other = alone[name, tiny_dataset], alone[name, swapped]
            for m in ("nDCG@10", "RR@10"):  # each part as scored alone, the mean as weighted
                assert metrics[f"{m}/tiny"] == pytest.approx(mine[m], abs=1e-6)
                assert metrics[f"{m}/other"] == pytest.approx(other[m], abs=1e-6)
                mean = (w_main * mine[m] + w_other * other[m]) / (w_main + w_other)
                assert metrics[m] == pytest.approx(mean, abs=1e-6)
            assert metrics["primary_metric"] == "nDCG@10" and metrics["also_passages_encoded"] == 40
            rows.append({"trial": "t", "step": step, "checkpoint": name, "metrics": metrics})
        chosen[w_main, w_other] = best_row(rows, "nDCG@10")["checkpoint"]
    assert chosen == {(1.0, 0.1): "good", (0.1, 1.0): "ruined"}
    # The validation curve draws each dev set's own curve beside the mean.
    drawn = curves(rows, "nDCG@10")
    assert set(drawn) == {("t", "nDCG@10"), ("t", "nDCG@10/tiny"), ("t", "nDCG@10/other")}
    assert [v for _, v in drawn["t", "nDCG@10/other"]] == [
        r["metrics"]["nDCG@10/other"] for r in rows
    ]
    ledger = Ledger(tmp_path / "ledger.jsonl")
    for r in rows:
        ledger.append(done_row(r["trial"], r["step"], r["checkpoint"], r["metrics"]))
    assert plot_curves(ledger, "nDCG@10").stat().st_size > 0


def test_other_dev_sets_are_sampled_as_the_main_one(
    tmp_path: Path, tiny_dataset: Path, tiny_model_dir: Path, swapped: Path
) -> None:
    sampling = {"strategy": "random", "size": 5, "seed": 3}
    also = [{"path": str(swapped), "split": "test", "name": "other"}]
    cfg = _cfg(tmp_path, tiny_dataset, tiny_model_dir, sampling=sampling, also=also)
    ((label, split),) = Validator(cfg, ["bio-0"])._also_splits()
    assert label == "other" and len(split.doc_ids) == 10 + 5  # judged + size
    assert {"astro-0", "astro-1"} <= set(split.doc_ids)  # every judged doc stays
    ((_, whole),) = Validator(cfg, None)._also_splits()  # a full-corpus validator: whole
    assert len(whole.doc_ids) == 40


def test_a_dev_set_that_cannot_serve_is_one_line(
    tmp_path: Path, tiny_dataset: Path, tiny_model_dir: Path, swapped: Path
) -> None:
    from raydr.training.preflight import preflight

    def check(**entry) -> str:
        also = [{"path": str(swapped), "split": "test", "name": "other", **entry}]
        tree = merged(
            tiny_tree("devs", tmp_path, tiny_dataset, tiny_model_dir),
            {
                "training": {"split": "test", "group_size": 1, "batch_size": 1, "num_workers": 1},
                "validation": {"also": also, "sampling": {"strategy": "random", "size": 5}},
            },
        )
        with pytest.raises(RaydrError) as err:
            preflight(config.build(tree, "t"))
        assert "\n" not in str(err.value)
        return str(err.value)

    # The swapped set asks the training queries (same texts): selection would reward them.
    assert check().startswith("validation.also[0]: 5 of its 5 'test' queries are training")
    assert "no qrels split 'dev'" in check(split="dev")
    assert "named 'tiny'" in check(name="tiny")
    with pytest.raises(RaydrError, match="distinct"):
        _cfg(tmp_path, tiny_dataset, tiny_model_dir, also=[{"path": "a/x"}, {"path": "b/x"}])
    with pytest.raises(RaydrError, match="random, full or bm25-pool"):
        _cfg(
            tmp_path,
            tiny_dataset,
            tiny_model_dir,
            sampling={"strategy": "dense-pool"},
            also=[{"path": "a/x"}],
        )
