"""The verbs that need Ray, run as a user runs them: ``python -m raydr.cli …`` in a subprocess,
with its real stdout and stderr (worker lines included, as Ray forwards them)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import ray
import yaml
from conftest import DROP, LOCAL_RAY, tiny_job

pytestmark = pytest.mark.ray


def _raydr(*args: str, cwd: Path, timeout: float = 400) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)  # a fresh local Ray of the job's size, not somebody else's
    return subprocess.run(
        [sys.executable, "-m", "raydr.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _job(tmp_path: Path, dataset: Path, model: Path, negatives: Path) -> Path:
    """The tiny job as a YAML file: 4 steps, checkpoints at 2 and 4, one CPU validator,
    tracked in MLflow."""
    tree = tiny_job(
        "cli-job",
        tmp_path,
        dataset,
        model,
        negatives,
        # keep.best 2: both checkpoints stay, for `raydr validate` to be handed them below.
        training={
            "epochs": 4,
            "checkpoint_every": 2,
            "log_every": 1,
            "max_failures": 0,
            "keep": {"best": 2},
        },
        validation={"num_gpus": DROP},
        ray=LOCAL_RAY,
        tracking={"backend": "mlflow"},  # into runs/cli-job/mlflow.db
    )
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(tree))
    return job


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_dataset: Path, tiny_model_dir: Path, negatives: Path) -> dict:
    """One `raydr train` as a user runs it: 4 steps, checkpoints at 2 and 4, pool validation,
    then the selected checkpoint scored on the full corpus."""
    tmp = tmp_path_factory.mktemp("cli-train")
    job = _job(tmp, tiny_dataset, tiny_model_dir, negatives)
    done = _raydr("train", str(job), "-q", cwd=tmp)
    return {"job": job, "tmp": tmp, "done": done, "out": done.stdout + done.stderr}


def test_train_prints_each_step_once_and_the_selected_checkpoints_test_score(
    trained: dict,
) -> None:
    done, out = trained["done"], trained["out"]
    assert done.returncode == 0, out[-4000:]
    # Every progress line once in what the user sees (stdout and stderr together).
    steps = re.findall(r"step (\d+)/4 epoch \d+ loss [0-9.]+ .*s/step, .* left", out)
    assert steps == ["1", "2", "3", "4"], out[-4000:]
    best = re.search(r"best checkpoint by nDCG@10 on test .*: step (\d+) = ([0-9.]+)", done.stdout)
    assert best, done.stdout
    table = dict(
        line.split() for line in done.stdout.splitlines() if re.match(r"^\S+ +[0-9.]+$", line)
    )
    assert set(table) == {"nDCG@10", "RR@10", "R@100", "R@1000", "AP"}
    assert f"[checkpoint selected on test (step {best[1]}) on test, full corpus]" in done.stdout
    # Every checkpoint was pushed to the pool and validated, the last one too.
    from raydr.validation.ledger import Ledger

    rows = Ledger.find(trained["tmp"] / "runs" / "cli-job").results("cli-job")
    assert [(r["step"], Path(r["checkpoint"]).is_dir()) for r in rows] == [(2, True), (4, True)]
    # The summary's disk figure: both kept; the older one without its optimizer state.
    assert re.search(
        r"disk: 2 checkpoints, \d+ MB kept; retention freed \d+ MB \(0 deleted, 1 without",
        done.stdout,
    ), done.stdout
    # The printed test score is the one written to metrics.json, of the selected checkpoint.
    metrics = json.loads((trained["tmp"] / "runs/cli-job/metrics.json").read_text())
    assert float(table["nDCG@10"]) == pytest.approx(metrics["metrics"]["nDCG@10"], abs=1e-4)
    assert metrics["model"].endswith(f"checkpoint_step_{int(best[1]):07d}")


def test_the_mlflow_run_holds_params_reports_the_ledgers_validations_and_the_model(
    trained: dict,
) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    from raydr.validation.ledger import Ledger

    assert trained["done"].returncode == 0
    run_dir = trained["tmp"] / "runs" / "cli-job"
    uri, before = f"sqlite:///{run_dir / 'mlflow.db'}", mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        runs = mlflow.search_runs(experiment_names=["cli-job"])
    finally:
        mlflow.set_tracking_uri(before)
    assert len(runs) == 1, runs
    run = runs.iloc[0]
    assert run["status"] == "FINISHED" and run["params.training.epochs"] == "4"
    client = MlflowClient(uri)

    def history(key: str) -> dict[int, float]:
        return {m.step: m.value for m in client.get_metric_history(run.run_id, key)}

    # Every validated checkpoint at its own step, with the ledger's value.
    ledger = Ledger.find(run_dir).results("cli-job")
    assert history("validation/nDCG_at_10") == {r["step"]: r["metrics"]["nDCG@10"] for r in ledger}
    assert sorted(history("loss")) == [2, 4]  # rank 0's report at each checkpoint
    files = {Path(f.path).name for f in client.list_artifacts(run.run_id, "model")}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
    assert not any("optimizer" in f for f in files), files
    _bench_reads_back(trained["job"], trained["tmp"], "mlflow")


def test_inline_validation_logs_its_rows_to_the_wandb_group_when_training_ends(
    tmp_path: Path, tiny_dataset: Path, tiny_model_dir: Path, negatives: Path
) -> None:
    """Inline, rank 0 writes the ledger and the driver logs its rows once training ends, from
    the process that also holds the group's driver run: both runs stay open side by side."""
    from raydr.testing import wandb_records as wr
    from raydr.validation.ledger import Ledger

    job = _job(tmp_path, tiny_dataset, tiny_model_dir, negatives)
    overrides = ["tracking.backend=wandb", "validation.mode=inline"]
    done = _raydr("train", str(job), "-q", "--no-eval", *overrides, cwd=tmp_path)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    run_dir = tmp_path / "runs" / "cli-job"
    run_id = json.loads((run_dir / "tracking.json").read_text())["run_id"]
    ledger = {r["step"]: r["metrics"]["nDCG@10"] for r in Ledger.find(run_dir).results()}
    rows = wr.history(wr.run_file(run_dir, f"{run_id}-validation"))
    assert {r["checkpoint_step"]: r["validation/nDCG@10"] for r in rows} == ledger
    assert sorted(ledger) == [2, 4]
    (model,) = wr.artifacts(wr.run_file(run_dir, run_id))
    assert "model.safetensors" in model["files"]


def _bench_reads_back(job: Path, tmp: Path, backend: str) -> None:
    """`raydr bench tracking` finds the run as a user would and agrees with the ledger."""
    from raydr.cli import main

    out = tmp / f"readback-{backend}.json"
    assert (
        main(["bench", "tracking", str(job), f"tracking.backend={backend}", "--out", str(out)]) == 0
    )
    got = json.loads(out.read_text())
    assert (got["steps_equal"], got["steps_in_ledger"], got["max_abs_diff"]) == (2, 2, 0.0), got
    assert got["report_steps"] == [2, 4] and got["params_missing"] == [], got
    assert any(f.endswith("model.safetensors") for f in got["model_files"]), got


def test_an_offline_wandb_group_holds_params_reports_the_ledgers_validations_and_the_model(
    tmp_path: Path, tiny_dataset: Path, tiny_model_dir: Path, negatives: Path
) -> None:
    """The same job tracked in W&B (offline, no account): the driver's run with the model,
    rank 0's with its reports (Ray's setup_wandb), the pool's with every validated row."""
    from raydr.testing import wandb_records as wr
    from raydr.validation.ledger import Ledger

    job = _job(tmp_path, tiny_dataset, tiny_model_dir, negatives)
    done = _raydr("train", str(job), "-q", "--no-eval", "tracking.backend=wandb", cwd=tmp_path)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    run_dir = tmp_path / "runs" / "cli-job"
    run_id = json.loads((run_dir / "tracking.json").read_text())["run_id"]
    assert f"tracking: W&B group cli-job (run {run_id})" in done.stdout
    driver, train, validation = (
        wr.run_file(run_dir, run_id + part) for part in ("", "-train", "-validation")
    )
    for path, job_type in ((driver, "job"), (train, "train"), (validation, "validation")):
        (named,) = wr.runs(path)
        assert (named["run_group"], named["job_type"]) == ("cli-job", job_type)
        assert wr.config(path)["training"]["epochs"] == 4
    # Rank 0's report at each checkpoint, at its step.
    assert [r["_step"] for r in wr.history(train) if "loss" in r] == [2, 4]
    # Every validated checkpoint against its own step, with the ledger's value.
    ledger = {r["step"]: r["metrics"]["nDCG@10"] for r in Ledger.find(run_dir).results()}
    rows = {r["checkpoint_step"]: r["validation/nDCG@10"] for r in wr.history(validation)}
    assert rows == ledger and sorted(rows) == [2, 4]
    (model,) = wr.artifacts(driver)
    assert model["type"] == "model"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(model["files"])
    assert not any("optimizer" in f for f in model["files"]), model["files"]
    _bench_reads_back(job, tmp_path, "wandb")


def test_validate_given_checkpoints_and_watch_mode_agree_with_the_ledger(
    trained: dict, capsys
) -> None:
    from raydr.cli import main
    from raydr.validation.ledger import Ledger

    assert trained["done"].returncode == 0
    job, storage = str(trained["job"]), trained["tmp"] / "storage" / "cli-job"
    ledger = Ledger.find(trained["tmp"] / "runs" / "cli-job")
    during = {r["step"]: r["metrics"]["nDCG@10"] for r in ledger.results("cli-job")}
    assert sorted(during) == [2, 4]
    ckpts = sorted(str(p) for p in storage.glob("checkpoint_step_*"))
    try:
        assert main(["validate", job, *ckpts, "--trial", "given"]) == 0
        printed = re.findall(r"step +(\d+) +nDCG@10 ([0-9.]+)", capsys.readouterr().out)
        assert {int(s): float(v) for s, v in printed} == pytest.approx(during, abs=1e-4)
        args = ["--watch", str(storage), "--trial", "watched", "--poll", "0.5", "--timeout", "8"]
        assert main(["validate", job, *args]) == 0
        out = capsys.readouterr().out
        assert sorted(re.findall(r"queued \S+ \(step (\d+)\)", out)) == ["2", "4"]
    finally:
        ray.shutdown()  # the CLI started a local Ray in this process
    for trial in ("given", "watched"):
        got = {r["step"]: r["metrics"]["nDCG@10"] for r in ledger.results(trial)}
        assert got == pytest.approx(during, abs=1e-6), trial


def test_best_exports_a_model_that_transformers_loads_cleanly(trained: dict, capsys) -> None:
    from transformers import AutoModel

    from raydr.cli import main

    assert trained["done"].returncode == 0
    out = trained["tmp"] / "export"
    assert main(["best", str(trained["tmp"] / "runs" / "cli-job"), "--export", str(out)]) == 0
    printed = capsys.readouterr().out
    best = json.loads(printed[: printed.index("exported to")])
    assert best["trial"] == "cli-job" and best["step"] in (2, 4)
    model, info = AutoModel.from_pretrained(out, output_loading_info=True)
    assert not any(info.values()), info  # nothing missing, unexpected or mismatched
    assert model.config.hidden_size == 32


def test_a_failing_worker_ends_in_one_line_naming_its_cause_and_the_full_log(
    tmp_path: Path, tiny_dataset: Path, tiny_model_dir: Path, negatives: Path
) -> None:
    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    job = _job(tmp_path, tiny_dataset, broken, negatives)
    done = _raydr("train", str(job), "-q", "validation.enabled=false", cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-4000:]
    ours = [line for line in done.stderr.splitlines() if line.startswith("raydr: error:")]
    assert len(ours) == 1 and done.stderr.rstrip().endswith(ours[0]), done.stderr[-4000:]
    line = ours[0]
    # Both ranks fail; Ray's controller may abort the group on the first failure it polls,
    # before the other rank's has reached it (seen once in a suite run): either or both ranks.
    assert re.search(r"training failed: (rank [01]|ranks 0,1): ", line), line
    assert "cannot load model weights" in line, line
    log = Path(line.split("full log: ")[1])
    assert log == tmp_path / "runs" / "cli-job" / "train-failure.log"
    assert "Traceback" in log.read_text() and "broken-model" in log.read_text()
    # The only traces on the terminal are Ray's forwarded worker logs, never the driver's own.
    own = [x for x in done.stderr.splitlines() if not re.match(r"(\x1b\[\d+m)?\(", x)]
    assert not any("Traceback" in x for x in own), "\n".join(own)


def test_refit_trains_on_train_and_dev_to_the_selected_step_on_its_schedule(
    tmp_path: Path, dev_dataset: Path, tiny_model_dir: Path
) -> None:
    """`raydr mine-negatives --refit` then `raydr train --refit` after a run whose ledger chose
    step 2 of 4 on dev: 3 training queries (1 step an epoch) become 5 (2), so the refit stops
    at step 4 of an 8-step schedule, at the learning rate step 4 has there, and is scored."""
    from raydr import config
    from raydr.cli import main
    from raydr.training import checkpoint
    from raydr.validation.ledger import Ledger, done_row

    tree = tiny_job(
        "refit",
        tmp_path,
        dev_dataset,
        tiny_model_dir,
        tmp_path / "negatives.parquet",
        training={"batch_size": 1, "epochs": 4, "lr": 1e-3, "max_failures": 0},
        validation={"split": "dev", "num_gpus": DROP},
        ray=LOCAL_RAY,
    )
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(tree))
    assert main(["mine-negatives", str(job), "--depth", "3"]) == 0
    assert main(["mine-negatives", str(job), "--depth", "3", "--refit"]) == 0
    cfg = config.load(job)
    ledger = Ledger.for_run(cfg)  # the job's run, as `raydr train` would have left it
    for step, score in ((2, 0.9), (4, 0.6)):
        ledger.append(done_row("refit", step, f"/pruned/{step}", {"nDCG@10": score}))

    done = _raydr("train", str(job), "-q", "--refit", cwd=tmp_path)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert (
        "picked step 2 (0.9000); training on test+dev (5 queries, 3 before) to step 4 of a "
        "8-step schedule" in done.stdout
    ), done.stdout
    final = json.loads(done.stdout[done.stdout.index("{") : done.stdout.index("}\n") + 1])
    # Linear decay over 8 steps after 1 warm-up step: step 4 leaves 4/7 of the peak rate (a
    # schedule squeezed into the 4 steps would have reached 0).
    assert final["step"] == 4 and final["lr"] == pytest.approx(1e-3 * 4 / 7)
    run = tmp_path / "runs" / "refit-refit"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["model"].endswith("checkpoint_step_0000004")
    assert checkpoint.read(metrics["model"]).config["training"]["split"] == "test+dev"
    assert json.loads((run / "refit.json").read_text())["selected_step"] == 2
    assert "[refit to step 4 (dev picked 2) on test, full corpus]" in done.stdout
    assert not (run / "validation").exists(), "a refit has no dev left to validate on"
    assert [r["step"] for r in ledger.results("refit")] == [2, 4], "the job's ledger changed"
