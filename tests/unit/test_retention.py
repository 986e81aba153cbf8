"""Retention (training.keep): what the ledger decides, and the checkpoint module's deleting,
on real tiny checkpoints; a process killed mid-prune leaves every remaining checkpoint whole."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import tiny_tree, write_checkpoint

from raydr import config
from raydr.cli import main
from raydr.config import KeepConfig
from raydr.training import checkpoint
from raydr.validation.ledger import done_row, failed_row, pending_row
from raydr.validation.retention import disk, plan, strays


def _rows(scores: dict[int, float | None], pending: tuple[int, ...] = ()) -> list[dict]:
    """One trial's ledger state: a done row per scored step, failed for None, pending ones."""
    rows = []
    for step, value in scores.items():
        path = f"/s/run/{checkpoint.dir_name(step)}"
        if value is None:
            rows.append(failed_row("t", step, path, "broken"))
        else:
            rows.append(done_row("t", step, path, {"nDCG@10": value}))
    rows += [pending_row("t", s, f"/s/run/{checkpoint.dir_name(s)}") for s in pending]
    return rows


def _steps(paths: list[str]) -> list[int]:
    return [int(p.rsplit("_", 1)[-1]) for p in paths]


def test_keeps_the_best_the_newest_and_whatever_is_still_owed() -> None:
    rows = _rows({1: 0.5, 2: 0.9, 3: 0.4, 4: None, 5: 0.6}, pending=(6, 7))
    todo = plan(rows, KeepConfig(best=1, newest=1), "nDCG@10")
    # Step 6 is the worst of nothing (not validated yet) and not the newest: kept anyway.
    assert _steps(todo.delete) == [1, 3, 4, 5]
    # The best (2) keeps the model only; the newest (7) keeps its optimizer state; the owed one
    # (6) stays whole until it closes: a validator may be reading it.
    assert _steps(todo.strip) == [2]
    # Busy in the queue (a mining job after the row closed): never deleted either.
    busy = plan(rows, KeepConfig(best=1, newest=1), "nDCG@10", busy=[3])
    assert 3 not in _steps(busy.delete)


def test_the_newest_keeps_its_optimizer_state_when_closed_and_not_the_best() -> None:
    """The resume point: a validated newest that is not the best stays whole (never stripped)."""
    todo = plan(_rows({1: 0.5, 2: 0.9, 3: 0.4}), KeepConfig(best=1, newest=1), "nDCG@10")
    assert _steps(todo.delete) == [1] and _steps(todo.strip) == [2]


def test_ties_go_to_the_earlier_step_and_min_mode_inverts() -> None:
    rows = _rows({1: 0.7, 2: 0.7, 3: 0.1, 4: 0.2})
    assert _steps(plan(rows, KeepConfig(best=1), "nDCG@10").delete) == [2, 3]
    assert _steps(plan(rows, KeepConfig(best=1), "nDCG@10", "min").delete) == [1, 2]


def test_a_stopped_trial_keeps_its_best_alone_once_its_rows_close() -> None:
    keep = KeepConfig(best=2, newest=1)
    owed = _rows({4: 0.3, 8: 0.5}, pending=(12,))
    early = plan(owed, keep, "nDCG@10", stopped=True)
    assert early.delete == [] and _steps(early.strip) == [4, 8]  # 12 still owed: wait
    closed = _rows({4: 0.3, 8: 0.5, 12: 0.4})
    late = plan(closed, keep, "nDCG@10", stopped=True)
    assert _steps(late.delete) == [4, 12] and _steps(late.strip) == [8]
    # A search's finished trial never resumes either: its best two, no optimizer state.
    done = plan(closed, keep, "nDCG@10", finished=True)
    assert _steps(done.delete) == [4] and _steps(done.strip) == [8, 12]


def test_keep_best_null_keeps_every_checkpoint_whole() -> None:
    todo = plan(_rows({1: 0.1, 2: 0.2, 3: 0.3}), KeepConfig(best=None), "nDCG@10")
    assert todo.delete == [] and todo.strip == []


@pytest.fixture()
def ckpt(tmp_path: Path, tiny_dataset: Path, tiny_model_dir: Path) -> tuple[Path, object]:
    cfg = config.build(tiny_tree("keep", tmp_path, tiny_dataset, tiny_model_dir), "t")
    return write_checkpoint(tmp_path / "storage" / "run", tiny_model_dir, 3, cfg), cfg


def test_a_stripped_checkpoint_stays_complete_loadable_and_exportable(ckpt, tmp_path) -> None:
    folder, cfg = ckpt
    assert checkpoint.has_training_state(folder)
    freed = checkpoint.strip_training_state(folder)
    assert freed > 0 and not checkpoint.has_training_state(folder)
    assert checkpoint.is_complete(folder) and checkpoint.read(folder).step == 3
    checkpoint.load(folder, cfg.model)
    out = checkpoint.export(folder, tmp_path / "export")
    assert checkpoint.read(out).step == 3
    from transformers import AutoModel

    AutoModel.from_pretrained(out)
    assert checkpoint.strip_training_state(folder) == 0  # twice is harmless


def test_delete_is_whole_and_only_touches_raydr_checkpoints(ckpt, tmp_path) -> None:
    folder, _ = ckpt
    size = checkpoint.size_bytes(folder)
    assert checkpoint.delete(folder) == size and not folder.exists()
    assert checkpoint.delete(folder) == 0  # already gone
    foreign = tmp_path / "checkpoint-500"
    foreign.mkdir()
    (foreign / "model.safetensors").write_bytes(b"x")
    assert checkpoint.delete(foreign) == 0 and foreign.exists()


def test_a_stopped_trials_unsubmitted_folders_are_strays(tmp_path, tiny_dataset, tiny_model_dir):
    # A search "keep": trial t's Train run is <storage>/keep-t. Ray committed steps 4 and 8;
    # the stop killed the trial before rank 0 handed 8 to the pool, so only 4 has rows.
    cfg = config.build(tiny_tree("keep", tmp_path, tiny_dataset, tiny_model_dir), "t")
    run = Path(cfg.paths.train_storage) / "keep-t"
    folders = [write_checkpoint(run, tiny_model_dir, s, cfg) for s in (4, 8)]
    rows = [done_row("t", 4, str(folders[0]), {"nDCG@10": 0.5})]
    assert strays(cfg, "t", rows) == [str(folders[1])]
    assert strays(cfg, "t", [*rows, pending_row("t", 8, str(folders[1]))]) == []
    assert strays(cfg, "other", rows) == []  # another trial's run: nothing of t's


def test_a_searchs_disk_figure_counts_its_own_trials_alone(tmp_path, tiny_dataset, tiny_model_dir):
    # Searches "keep" and "keep-all" share the storage; trial t's runs are keep-t, keep-all-t.
    cfg = config.build(tiny_tree("keep", tmp_path, tiny_dataset, tiny_model_dir), "t")
    storage = Path(cfg.paths.train_storage)
    mine = write_checkpoint(storage / "keep-t", tiny_model_dir, 4, cfg)
    write_checkpoint(storage / "keep-all-t", tiny_model_dir, 4, cfg)
    figures = disk(cfg, trials=["t", "never-started"])
    assert figures["checkpoints_kept"] == 1
    assert figures["bytes_kept"] == checkpoint.size_bytes(mine)


# A prune killed part way: rmtree removes a few files of the checkpoint, then the process dies.
_KILLED_DELETE = """
import os, shutil, signal, sys
from pathlib import Path
real = shutil.rmtree
def dying_rmtree(path, *a, **k):
    files = sorted(p for p in Path(path).rglob("*") if p.is_file())
    for p in files[: len(files) // 2]:
        p.unlink()
    os.kill(os.getpid(), signal.SIGKILL)
shutil.rmtree = dying_rmtree
from raydr.training import checkpoint
checkpoint.delete(sys.argv[1])
"""
# A strip killed right after its first change to the folder, whichever that is.
_KILLED_STRIP = """
import os, signal, sys
from pathlib import Path
from raydr import atomic
def dying(real):
    def op(*a, **k):
        real(*a, **k)
        os.kill(os.getpid(), signal.SIGKILL)
    return op
Path.unlink = dying(Path.unlink)
atomic.write_text = dying(atomic.write_text)
from raydr.training import checkpoint
checkpoint.strip_training_state(sys.argv[1])
"""


def _killed(script: str, folder: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", script, str(folder)], env=env, timeout=120)
    assert done.returncode == -signal.SIGKILL


def test_a_prune_killed_midway_leaves_a_run_that_loads_resumes_and_exports(
    tmp_path: Path, tiny_dataset: Path, tiny_model_dir: Path
) -> None:
    cfg = config.build(tiny_tree("keep", tmp_path, tiny_dataset, tiny_model_dir), "t")
    run = tmp_path / "storage" / "run"
    old, best, newest = (write_checkpoint(run, tiny_model_dir, s, cfg) for s in (1, 2, 3))
    # Ray's record of the run, as Ray Train 2.60 writes it, naming all three.
    results = [{"checkpoint_dir_name": p.name, "metrics": {}} for p in (old, best, newest)]
    record = {
        "checkpoint_results": results,
        "checkpoint_report_indices": [0, 1, 2],
        "latest_checkpoint_result": results[-1],
        "pending_training_results": [],
    }
    (run / checkpoint.RAY_SNAPSHOT).write_text(json.dumps(record))

    _killed(_KILLED_DELETE, old)
    _killed(_KILLED_STRIP, best)
    # Nothing half-deleted is in sight: the old one is gone whole, under a hidden name.
    assert not old.exists() and checkpoint.listed(run) == [best, newest]
    # The half-stripped one is a complete checkpoint (its record no longer lists the state).
    assert checkpoint.read(best).step == 2
    checkpoint.load(best, cfg.model)
    checkpoint.export(best, tmp_path / "export")
    # The next start finishes the deletion and drops the gone one from Ray's record, so Ray
    # resumes (it refuses a record naming a missing folder) from the untouched newest.
    assert checkpoint.forget_deleted(run) == 1
    assert not [p for p in run.iterdir() if p.name.startswith(".")]
    repaired = json.loads((run / checkpoint.RAY_SNAPSHOT).read_text())
    names = [r["checkpoint_dir_name"] for r in repaired["checkpoint_results"]]
    assert names == [best.name, newest.name] and repaired["checkpoint_report_indices"] == [1, 2]
    state = checkpoint.load_training_state(newest)
    assert "optimizer" in state


@pytest.mark.parametrize(
    ("keep", "field"),
    [({"best": 0}, "training.keep.best"), ({"newest": 0}, "training.keep.newest")],
)
def test_a_bad_retention_is_one_line_naming_the_field(
    tmp_path: Path, tiny_dataset: Path, tiny_model_dir: Path, capsys, keep, field
) -> None:
    tree = tiny_tree("keep", tmp_path, tiny_dataset, tiny_model_dir)
    tree["training"] = {"keep": keep}
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(tree))
    assert main(["train", str(job)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("raydr: error:") and field in err[0], err
    if field.endswith("newest"):
        assert "resume point" in err[0]
