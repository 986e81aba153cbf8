"""Ray Tune over Ray Train with the shared validation pool, on a real local Ray cluster."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import tiny_search_tree

from raydr import config
from raydr.errors import RaydrError

pytestmark = pytest.mark.ray


def _tree(tmp_path: Path, dataset: Path, model: Path, negatives: Path) -> dict:
    return tiny_search_tree("tiny-tune", tmp_path, dataset, model, negatives)


def test_bad_search_input_is_refused_before_any_trial(
    tmp_path: Path, tiny_dataset: Path, tiny_model_dir: Path, negatives: Path
) -> None:
    from raydr.tuning.space import check_metric, parse_space

    tree = _tree(tmp_path, tiny_dataset, tiny_model_dir, negatives)
    cases = [
        (
            {"space": {"training.lrr": {"uniform": [0, 1]}}},
            r"tune\.space\.training\.lrr: no such config field; did you mean 'training\.lr'",
        ),
        (
            {"space": {"training.lr": {"loguniform": [0, 1e-3]}}},
            r"loguniform needs \[low, high\] with 0 < low < high, got \[0, 0\.001\]",
        ),
        (
            {"space": {"training.lr": {"uniform": [1e-3, 1e-5]}}},
            r"uniform needs \[low, high\] with low < high",
        ),
        (
            {"space": {"training.temperature": {"choice": [0.05, -1]}}},
            r"training\.temperature: value -1 is not valid: Input should be greater than 0",
        ),
        ({"space": {"training.lr": {"normal": [0, 1]}}}, r"expected one of \{choice, grid"),
        (
            {"search_alg": "grid", "space": {"training.lr": {"choice": [1e-3, 1e-4]}}},
            r"search_alg=grid runs a grid, but tune\.space\.training\.lr is sampled \(choice\)",
        ),
    ]
    for tune_part, pattern in cases:
        cfg = config.build({**tree, "tune": {**tree["tune"], **tune_part}}, "t")
        with pytest.raises(RaydrError, match=pattern):
            parse_space(cfg)
    cfg = config.build({**tree, "tune": {**tree["tune"], "metric": "nDCG@20"}}, "t")
    with pytest.raises(
        RaydrError, match=r"tune\.metric 'nDCG@20' is not produced by the validators"
    ):
        check_metric(cfg)


def test_rerunning_an_edited_search_is_refused_not_silently_resumed(
    tmp_path: Path, tiny_dataset: Path, tiny_model_dir: Path, negatives: Path
) -> None:
    from raydr.tuning.search import check_same_search

    tree = _tree(tmp_path, tiny_dataset, tiny_model_dir, negatives)
    record = tmp_path / "runs" / "tiny-tune" / "search_config.json"
    check_same_search(config.build(tree, "t"), record, resuming=False)  # a new search records
    assert json.loads(record.read_text())["tune"]["space"] == tree["tune"]["space"]
    # The same search, on a bigger cluster: resumes.
    check_same_search(config.build({**tree, "ray": {"num_cpus": 8}}, "t"), record, True)
    edited = {**tree, "tune": {**tree["tune"], "space": {"training.lr": {"grid": [1e-4]}}}}
    with pytest.raises(RaydrError, match=r"started with a different config .*changed: tune\.space"):
        check_same_search(config.build(edited, "t"), record, resuming=True)


def test_asha_stops_the_bad_trial_on_validation_metrics(
    tmp_path: Path, tiny_dataset: Path, tiny_model_dir: Path, negatives: Path
) -> None:
    import ray

    from raydr.tuning.search import run_search
    from raydr.validation.ledger import Ledger

    tree = _tree(tmp_path, tiny_dataset, tiny_model_dir, negatives)
    # A subset of 30 of the 40 docs (10 judged + 20 drawn), so the full corpus differs.
    tree["validation"]["sampling"] = {"strategy": "random", "size": 20}
    tree["tracking"] = {"backend": "mlflow"}  # one MLflow run per trial, Ray's callback
    cfg = config.build(tree, "t")
    try:
        summary = run_search(cfg)
    finally:
        ray.shutdown()
    assert [t["error"] for t in summary["trials"]] == [None, None], "a crash is not a stop"
    trials = {t["config"]["training.lr"]: t for t in summary["trials"]}
    good, bad = trials[3e-3], trials[1e-9]
    assert good["stopped_early"] is False and good["best_metric"] is not None
    assert bad["stopped_early"] is True, "ASHA should have stopped the frozen trial"
    # What Tune received, per trial: (training step, validated step, metric), each equal to
    # the ledger's row for that validated step.
    ledger = Ledger.for_run(cfg)
    done = {(r["trial"], r["step"]): r["metrics"]["nDCG@10"] for r in ledger.results()}
    received: dict[str, list[tuple]] = {}
    for trial_dir in (tmp_path / "tune" / "tiny-tune").iterdir():
        for r in _results(trial_dir) if trial_dir.is_dir() else []:
            if "validated_step" in r:
                seen = (r["step"], r["validated_step"], r["nDCG@10"])
                received.setdefault(r["trial_id"], []).append(seen)
    assert set(received) == {good["trial"], bad["trial"]}
    for trial, reports in received.items():
        for _, validated_step, value in reports:
            assert value == done[(trial, validated_step)], (trial, validated_step)
    # The stopped trial's last metric is one at an ASHA rung (grace 4, factor 2: steps 4, 8, 16
    # of 20), below the learning trial's there. Which rung depends on how far validation lags
    # on a busy machine: a report carries the newest validated step, which may skip 4.
    last = received[bad["trial"]][-1][1]
    assert last in {4, 8, 16}, received[bad["trial"]]
    assert done[(bad["trial"], last)] < done[(good["trial"], last)]
    # It was judged on a validated metric: the ledger holds its checkpoint at the grace step,
    # scoring below the learning trial's at the same step.
    at4 = {r["trial"]: r["metrics"]["nDCG@10"] for r in ledger.results() if r["step"] == 4}
    assert at4[bad["trial"]] < at4[good["trial"]]
    # Every checkpoint the stopped trial submitted was validated and recorded (nothing owed).
    assert not [r for r in ledger.pending() if r["trial"] == bad["trial"]]
    assert summary["trial_steps_run"] < summary["trial_steps_without_scheduler"]
    assert Path(summary["best_model"], "config.json").is_file()
    # The winner was named on the full corpus: both trials' best checkpoints re-validated there,
    # each value the one a validator of the whole corpus gives that checkpoint.
    from raydr.validation.validator import Validator

    conf = summary["confirmation"]
    assert summary["winner_named_on"] == "full corpus" and conf["corpus_size"] == 40, conf
    assert {c["trial"] for c in conf["trials"]} == {good["trial"], bad["trial"]}
    whole = Validator(cfg.with_absolute_paths(), None)
    for cand in conf["trials"]:
        assert cand["full"] == whole.validate(cand["checkpoint"], cand["step"])["nDCG@10"]
        by_trial = {t["trial"]: t for t in summary["trials"]}
        assert cand["subset"] == by_trial[cand["trial"]]["best_metric"]
    assert summary["best_trial"]["trial"] == conf["winner"] == conf["trials"][0]["trial"]
    assert summary["best_trial"]["full_corpus_metric"] == conf["trials"][0]["full"]
    work = summary["validation"]
    assert work["stopped_checkpoints"] == "finish" and work["cancelled"] == 0
    assert work["done"] == len(ledger.results()) and work["validator_seconds"] > 0
    assert Path(summary["plot"]).is_file()
    # Retention: neither trial resumes, so each keeps its best checkpoint alone (the stopped one
    # once its rows closed), without optimizer state; the summary says what that left.
    from raydr.training import checkpoint

    for t in (good, bad):
        run = Path(cfg.with_absolute_paths().paths.train_storage) / f"{cfg.name}-{t['trial']}"
        left = checkpoint.listed(run)
        assert [checkpoint.read(f).step for f in left] == [t["best_step"]], t["trial"]
        assert not checkpoint.has_training_state(left[0])
    disk = summary["disk"]
    assert disk["checkpoints_kept"] == 2 and disk["bytes_freed"] > 0
    # Every validated checkpoint but the two kept went, and so may folders a stopped trial
    # committed but never handed over (strays, which have no row).
    assert disk["checkpoints_deleted"] >= len(ledger.results()) - 2
    assert list((tmp_path / "tune" / "tiny-tune").rglob("events.out.tfevents*")), (
        "no TensorBoard logs"
    )
    # MLflow, through Ray Tune's callback: a run per trial with its lr, and every validated
    # metric it reported paired with its checkpoint's step as the ledger has it.
    import mlflow

    uri = f"sqlite:///{cfg.with_absolute_paths().paths.run_dir / 'mlflow.db'}"
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        runs = mlflow.search_runs(experiment_names=["tiny-tune"])
        client = mlflow.tracking.MlflowClient(uri)
        for _, run in runs.iterrows():
            trial = next(t for t in (good, bad) if run["tags.trial_name"].endswith(t["trial"]))
            assert float(run["params.training.lr"]) == trial["config"]["training.lr"]
            steps = {
                m.step: m.value for m in client.get_metric_history(run.run_id, "validated_step")
            }
            values = {m.step: m.value for m in client.get_metric_history(run.run_id, "nDCG_at_10")}
            assert steps and set(steps) == set(values), run.run_id
            for it, validated in steps.items():
                assert values[it] == done[(trial["trial"], int(validated))]
    finally:
        mlflow.set_tracking_uri(before)
    assert len(runs) == 2


def test_rerun_after_the_driver_is_killed_resumes_the_search(
    tmp_path: Path, tiny_dataset: Path, tiny_model_dir: Path, negatives: Path
) -> None:
    tree = _tree(tmp_path, tiny_dataset, tiny_model_dir, negatives)
    # One at a time: the learning trial finishes, ASHA stops the frozen one, then a third runs.
    tree["tune"]["space"] = {"training.lr": {"grid": [3e-3, 1e-9, 1e-3]}}
    job = tmp_path / "tune.yaml"
    job.write_text(yaml.safe_dump(tree))
    cmd = [sys.executable, "-m", "raydr.cli", "tune", str(job)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    driver = subprocess.Popen(
        cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    exp = tmp_path / "tune" / "tiny-tune"
    try:
        deadline = time.time() + 300
        # Kill the whole driver (and its in-process Ray) while the third trial runs: the first
        # has finished and ASHA has stopped the second.
        while time.time() < deadline and not _trial_dir(exp, 1e-3).is_dir():
            time.sleep(0.5)
        assert _trial_dir(exp, 1e-3).is_dir(), "the third trial never started"
        time.sleep(2)
        before = {lr: _results(_trial_dir(exp, lr)) for lr in (3e-3, 1e-9)}
        # A trial ends on a report marked done: at max_t (step 20) when it ran its course.
        last = {lr: rows[-1] for lr, rows in before.items()}
        assert last[3e-3]["done"] and last[3e-3]["validated_step"] == 20, "first did not finish"
        assert last[1e-9]["done"] and last[1e-9]["validated_step"] < 20, "second was not stopped"
        dirs_before = {d.name for d in exp.iterdir() if d.is_dir()}
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()  # its in-process Ray shares the process group, so it dies with it
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((tmp_path / "runs" / "tiny-tune" / "summary.json").read_text())
    trials = {t["config"]["training.lr"]: t for t in summary["trials"]}
    assert sorted(trials) == [1e-9, 1e-3, 3e-3] and all(t["error"] is None for t in trials.values())
    # Finished and stopped trials were not run again: their results are untouched, and the
    # stopped one is still reported as stopped early.
    for lr, rows in before.items():
        assert _results(_trial_dir(exp, lr)) == rows, f"trial lr={lr} was run again"
    assert trials[1e-9]["stopped_early"] is True and trials[3e-3]["stopped_early"] is False
    # The same search resumed, not a new one in the same folder: the same trial ids and
    # folders (a fresh search would have made three new trials beside the old ones).
    ids_before = {r["trial_id"] for rows in before.values() for r in rows}
    assert ids_before <= {t["trial"] for t in trials.values()}
    dirs_after = {d.name for d in exp.iterdir() if d.is_dir()}
    assert dirs_before == dirs_after and len(dirs_after) == 3, (dirs_before, dirs_after)


def _trial_dir(exp: Path, lr: float) -> Path:
    """The folder of the trial with this learning rate (Tune writes its params.json)."""
    for d in sorted(exp.iterdir()) if exp.is_dir() else []:
        try:  # Tune writes params.json in place: a poll may find it empty or half written
            params = json.loads((d / "params.json").read_text())
        except (OSError, ValueError):
            continue
        if params.get("training.lr") == lr:
            return d
    return exp / f"no-trial-lr-{lr}"


def _results(trial_dir: Path) -> list[dict]:
    # result.json holds every reported result, one JSON object a line (progress.csv keeps only
    # the columns of the first result).
    path = trial_dir / "result.json"
    return (
        [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if path.exists()
        else []
    )
