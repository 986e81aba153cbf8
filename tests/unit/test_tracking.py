"""Experiment tracking without Ray: the MLflow run a job opens (SQLite in the run folder by
default), the W&B runs (offline in the run folder by default), each reopened by a rerun,
validated metrics at their checkpoint's step, legal names, and bad settings as one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raydr import config, tracking
from raydr.cli import main


def _cfg(tmp_path: Path, **tracked) -> config.RaydrConfig:
    tree = {
        "name": "tracked",
        "output_dir": str(tmp_path / "runs"),
        "data": {"path": str(tmp_path / "data")},
        "tracking": {"backend": "mlflow", **tracked},
    }
    return config.build(tree, "t")


def test_names_and_values_are_what_mlflow_takes() -> None:
    assert tracking.metric_name("nDCG@10/debian") == "nDCG_at_10/debian"
    report = {"loss": 0.5, "step": 3, "nDCG@10": 0.7, "primary_metric": "nDCG@10", "ok": True}
    assert tracking.numbers(report) == {"loss": 0.5, "step": 3.0, "nDCG_at_10": 0.7}
    assert tracking.flat({"a": {"b": 1, "c": {"d": None}}, "e": "x"}) == {
        "a.b": "1",
        "a.c.d": "None",
        "e": "x",
    }


def test_a_run_logs_params_and_validations_and_a_rerun_reopens_it(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    cfg = _cfg(tmp_path)
    run = tracking.start(cfg)
    assert run.uri == f"sqlite:///{tmp_path / 'runs' / 'tracked' / 'mlflow.db'}"
    client = MlflowClient(run.uri)
    exp = client.get_experiment(run.experiment)
    assert exp.name == "tracked" and exp.artifact_location.endswith("runs/tracked/mlartifacts")
    assert client.get_run(run.run_id).data.params["training.lr"] == str(cfg.training.lr)
    for step, value in ((10, 0.61), (20, 0.67)):
        run.log_validation(step, {"nDCG@10": value, "primary_metric": "nDCG@10"})
    history = client.get_metric_history(run.run_id, "validation/nDCG_at_10")
    assert [(m.step, m.value) for m in history] == [(10, 0.61), (20, 0.67)]
    run.end(ok=False)
    # A rerun resumes training, so it resumes the same MLflow run, RUNNING again.
    again = tracking.start(cfg)
    assert again.run_id == run.run_id
    assert client.get_run(run.run_id).info.status == "RUNNING"
    assert len(client.search_runs([run.experiment])) == 1
    assert (
        tracking.start(config.build({**cfg.model_dump(mode="json"), "tracking": {}}, "t")) is None
    )


def test_a_tracking_store_that_cannot_serve_is_one_line(tmp_path: Path, capsys) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(_cfg(tmp_path, uri="bogus://nowhere").model_dump_json())
    assert main(["train", str(job)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("raydr: error: tracking.uri 'bogus://nowhere'")
    with pytest.raises(Exception, match="backend"):
        _cfg(tmp_path, backend="neptune")


def test_wandb_settings_that_belong_to_the_other_backend_are_one_line(
    tmp_path: Path, capsys
) -> None:
    for tracked, expected in (
        ({"backend": "wandb", "uri": "http://x"}, "tracking.uri is an MLflow URI"),
        ({"entity": "me"}, "tracking.entity is W&B's"),
        ({"backend": "wandb", "mode": "cloud"}, "tracking.mode"),
    ):
        job = tmp_path / "job.yaml"
        tree = _cfg(tmp_path).model_dump(mode="json")
        job.write_text(json.dumps({**tree, "tracking": {**tree["tracking"], **tracked}}))
        assert main(["train", str(job)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and expected in err, err


def test_online_wandb_without_an_api_key_is_one_line_before_anything_runs(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-home"))  # no `wandb login`
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    job = tmp_path / "job.yaml"
    job.write_text(_cfg(tmp_path, backend="wandb", mode="online").model_dump_json())
    assert main(["train", str(job)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no W&B API key; run `wandb login`" in err, err
    assert not (tmp_path / "runs" / "tracked" / "tracking.json").exists()


def test_an_offline_wandb_group_holds_params_validations_by_checkpoint_step_and_the_model(
    tmp_path: Path,
) -> None:
    from raydr.testing import wandb_records as wr

    cfg = _cfg(tmp_path, backend="wandb")
    run = tracking.start(cfg)
    run_dir = tmp_path / "runs" / "tracked"
    assert run.dir == str(run_dir) and run.mode == "offline"
    # The pool closes rows out of order; each lands against its own checkpoint's step.
    for step, value in ((20, 0.67), (10, 0.61)):
        run.log_validation(step, {"nDCG@10": value, "primary_metric": "nDCG@10"})
    run.close_here()
    model = run.model_dir()
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    run.log_model(model)
    run.end(ok=True)
    validation = wr.run_file(run_dir, f"{run.run_id}-validation")
    rows = [(r["checkpoint_step"], r["validation/nDCG@10"]) for r in wr.history(validation)]
    assert rows == [(20, 0.67), (10, 0.61)]
    (named,) = wr.runs(validation)
    assert (named["display_name"], named["run_group"], named["job_type"]) == (
        "tracked/validation",
        "tracked",
        "validation",
    )
    assert wr.config(validation)["training"]["lr"] == cfg.training.lr  # typed, unlike MLflow's
    driver = wr.run_file(run_dir, run.run_id)
    (art,) = wr.artifacts(driver)
    assert (art["name"], art["type"], art["files"]) == ("tracked-model", "model", ["config.json"])
    # A rerun resumes training, so it resumes the same W&B runs.
    again = tracking.start(cfg)
    assert again.run_id == run.run_id
    again.end(ok=True)
