"""Ray Train end to end on a real local Ray cluster: tiny BERT, tiny dataset, 2 gloo workers."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import ray
from conftest import DROP, Whole, tiny_job

from raydr import config
from raydr.errors import RaydrError

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, object_store_memory=150 * 1024**2, include_dashboard=False)
    yield
    ray.shutdown()


def _cfg(
    tmp_path: Path, dataset: Path, model: Path, negatives: Path, **training
) -> config.RaydrConfig:
    """The tiny job for 3 epochs at lr 1e-3, without validation; raydr's default model dtype,
    output folder and evaluation."""
    tree = tiny_job(
        "tiny-train",
        tmp_path,
        dataset,
        model,
        negatives,
        output_dir=DROP,
        eval=DROP,
        model={"dtype": DROP},
        # Every checkpoint stays (no retention): the tests compare each one's loss.
        training={"epochs": 3, "lr": 1e-3, "keep": {"best": None}, **training},
        validation=Whole({"enabled": False}),
    )
    return config.build(tree, "test")


def test_train_two_workers_writes_self_describing_checkpoints(reference: dict) -> None:
    from raydr.training import checkpoint

    result, cfg = reference["result"], reference["cfg"]
    assert result.error is None
    # 5 queries, 2 workers x batch 1 → 2 steps per epoch (one query dropped for equal shapes).
    assert result.metrics["step"] == 6
    assert result.metrics["negatives_per_query"] == 2 * 1 * 2 - 1 + 8  # W*B*G - 1 + the bank
    info = checkpoint.read(result.checkpoint.path)
    assert (info.step, info.epoch) == (6, 2)
    assert info.config["training"]["group_size"] == 2
    # Hugging Face and sentence-transformers load the folder as it is, to the same vectors.
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    AutoModel.from_pretrained(result.checkpoint.path)
    st = SentenceTransformer(result.checkpoint.path, device="cpu")
    texts = ["cell protein gene", "star galaxy"]
    ours = _embed(result.checkpoint.path, cfg, texts)
    np.testing.assert_allclose(st.encode(texts), ours, atol=1e-5)


def _embed(path: str, cfg: config.RaydrConfig, texts: list[str]) -> np.ndarray:
    import torch

    from raydr.retrieval.encode import encode, tokenize
    from raydr.training import checkpoint

    model = checkpoint.load_model(path, cfg.model).eval()
    tok = checkpoint.load_tokenizer(path)
    ids = tokenize(tok, texts, cfg.model.passage_max_length)
    return encode(model.encode_passages, ids, pad_id=tok.pad_token_id, dtype=torch.float32)


def _losses(result) -> list[tuple[int, float]]:
    """(step, rank 0's loss) of every checkpoint the run reported, in step order."""
    return sorted((m["step"], m["loss"]) for _, m in result.best_checkpoints)


# 5 queries, 2 workers x batch 1: 2 steps per epoch, so a resume can land mid-epoch. A memory
# bank of 2 steps' passages (4 a step) joins from step 2: a resume must restore it too.
_RESUMABLE = {
    "batch_size": 1,
    "epochs": 3,
    "max_failures": 2,
    "memory_bank": {"size": 8, "warmup_steps": 1},
}


@pytest.fixture(scope="module")
def reference(local_ray, tmp_path_factory, tiny_dataset, tiny_model_dir, negatives) -> dict:
    """Per-step losses of an uninterrupted run: what a same-seed or resumed run must match."""
    from raydr.launch import train

    tmp = tmp_path_factory.mktemp("reference")
    cfg = _cfg(tmp, tiny_dataset, tiny_model_dir, negatives, **_RESUMABLE)
    cfg = config.build({**cfg.model_dump(mode="json"), "name": "reference"}, "t")
    result, _ = train(cfg)
    losses = _losses(result)
    assert [step for step, _ in losses] == [1, 2, 3, 4, 5, 6]
    return {"losses": losses, "result": result, "cfg": cfg}


def test_rerun_resumes_from_the_latest_checkpoint(reference: dict) -> None:
    from raydr.launch import train
    from raydr.training import checkpoint

    # The reference run again (same storage_path and name), one epoch longer: Ray restores the
    # run and the loop continues after its last step (6), instead of starting from scratch.
    tree = reference["cfg"].model_dump(mode="json")
    tree["training"]["epochs"] = 4
    again, _ = train(config.build(tree, "t"))
    assert again.metrics["step"] == 8
    assert again.metrics["resumed_from_step"] == 6, "the rerun started from scratch"
    steps = sorted(checkpoint.read(c.path).step for c, _ in again.best_checkpoints)
    assert steps[-2:] == [7, 8]


def test_bad_training_input_is_refused_before_workers_start(
    local_ray, tmp_path: Path, tiny_dataset: Path, tiny_model_dir: Path, negatives: Path
) -> None:
    from raydr.training.trainer import check_capacity

    with pytest.raises(
        RaydrError,
        match=r"training\.resources_per_worker: 8 × \{CPU: 1\} needs 8 CPU, but the cluster has 2",
    ):
        check_capacity(_cfg(tmp_path, tiny_dataset, tiny_model_dir, negatives, num_workers=8))
    from raydr.data.groups import build_rows, check_group_size, load_negatives

    rows = build_rows(tiny_dataset, "test", load_negatives(negatives))
    with pytest.raises(RaydrError, match="group_size=9 needs 8 hard negatives"):
        check_group_size(rows, 9, str(negatives))


@dataclass
class _KillAfterCommit:
    """A checkpoint hook (rank 0) that SIGKILLs its own worker once Ray's controller has
    committed the checkpoint of ``step``, before any later one can be: the restart must resume
    from exactly that step."""

    step: int
    marker: str

    def on_checkpoint(self, step: int, uri: str) -> None:
        import os
        import signal
        import time

        from raydr.training import checkpoint

        if step != self.step or Path(self.marker).exists():
            return
        snapshot = Path(uri).parent / "checkpoint_manager_snapshot.json"
        want = checkpoint.dir_name(step)
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                latest = json.loads(snapshot.read_text())["latest_checkpoint_result"]
                if latest and latest["checkpoint_dir_name"] == want:
                    break
            except (OSError, ValueError, KeyError, TypeError):
                pass
            time.sleep(0.05)
        Path(self.marker).write_text(want)
        os.kill(os.getpid(), signal.SIGKILL)

    def progress(self, step: int) -> None:
        pass

    def hold(self, step: int) -> None:
        pass


def _without_the_dataset(loop_config: dict) -> None:
    """The loop in a worker that cannot read the dataset's tables: only the memory-mapped
    store the driver built (a worker's memory must not grow with the corpus)."""
    from raydr.data import tables
    from raydr.training.loop import train_loop_per_worker

    def refuse(*args, **kwargs):
        raise AssertionError("a training worker read a whole dataset table")

    for name in ("load_corpus", "load_queries", "load_qrels"):
        setattr(tables, name, refuse)
    train_loop_per_worker(loop_config)


def test_killed_worker_resumes_from_checkpoint(
    reference: dict, tmp_path: Path, tiny_dataset: Path, tiny_model_dir: Path, negatives: Path
) -> None:
    from ray import cloudpickle

    from raydr.training import checkpoint
    from raydr.training.trainer import build_trainer

    cloudpickle.register_pickle_by_value(__import__(__name__))
    cfg = _cfg(tmp_path, tiny_dataset, tiny_model_dir, negatives, **_RESUMABLE)
    marker = tmp_path / "killed-once"
    # Killed after step 3: mid-epoch 1, whose first half (2 of its 4 rows) is already consumed.
    # Its workers read the memory-mapped store, never a whole table, and still match.
    hook = _KillAfterCommit(3, str(marker))
    result = build_trainer(cfg, hook=hook, loop=_without_the_dataset).fit()
    assert marker.exists(), "the worker was never killed"
    assert result.metrics["step"] == 6
    # Restarted from the last checkpoint committed before the kill: not 0, not a later one.
    assert result.metrics["resumed_from_step"] == 3
    # Steps 1-3 are a second run of the same seed from scratch: the same loss at every step
    # (dropout draws from torch's generator, seeded per step; unseeded, the losses differ).
    # Every later step's loss equals the uninterrupted run's too: after the restart the
    # workers take the epoch's remaining rows (none repeated, none skipped), with the
    # optimizer, schedule, dropout and memory bank of the uninterrupted run. A repeated or
    # skipped row changes the loss, and so does a bank rebuilt empty.
    got, want = _losses(result), reference["losses"]
    assert [step for step, _ in got] == [step for step, _ in want]
    assert [loss for _, loss in got] == pytest.approx([loss for _, loss in want], rel=1e-6)
    folders = [f for f in (tmp_path / "storage" / cfg.name).iterdir() if checkpoint.is_raydr(f)]
    steps = sorted(checkpoint.read(f).step for f in folders)
    assert steps == [1, 2, 3, 4, 5, 6]
    for folder in folders:  # every one loads: weights, tokenizer and the state to resume from
        checkpoint.load(folder, cfg.model)
        state = checkpoint.load_training_state(folder)
        assert state["optimizer"] is not None and state["scheduler"] is not None


def test_corrupted_checkpoint_is_refused_on_resume(
    local_ray, tmp_path: Path, tiny_dataset: Path, tiny_model_dir: Path, negatives: Path
) -> None:
    from raydr.training.checkpoint import dir_name
    from raydr.training.preflight import check_existing_checkpoints

    cfg = _cfg(tmp_path, tiny_dataset, tiny_model_dir, negatives)
    bad = tmp_path / "storage" / cfg.name / dir_name(3)
    bad.mkdir(parents=True)
    (bad / "raydr.json").write_text("{not json")
    snapshot = {"latest_checkpoint_result": {"checkpoint_dir_name": bad.name}}
    (bad.parent / "checkpoint_manager_snapshot.json").write_text(json.dumps(snapshot))
    with pytest.raises(RaydrError, match=r"raydr\.json: corrupted .* would resume from it"):
        check_existing_checkpoints(cfg)


@dataclass
class _PoolThenKill:
    """Rank 0's pool hook, then ``_KillAfterCommit``: the checkpoint reaches the pool (which
    prunes as training.keep says) before the worker dies."""

    pool: object
    kill: _KillAfterCommit

    def on_checkpoint(self, step: int, uri: str) -> None:
        self.pool.on_checkpoint(step, uri)
        self.kill.on_checkpoint(step, uri)

    def progress(self, step: int) -> None:
        self.pool.progress(step)

    def hold(self, step: int) -> None:
        self.pool.hold(step)


def test_retention_keeps_a_resumable_newest_through_a_kill_and_a_rerun(
    reference: dict, tmp_path: Path, tiny_dataset: Path, tiny_model_dir: Path, negatives: Path
) -> None:
    from ray import cloudpickle

    from raydr.launch import train
    from raydr.training import checkpoint
    from raydr.training.trainer import fit
    from raydr.validation.client import PoolHook
    from raydr.validation.ledger import Ledger
    from raydr.validation.pool import pool_name, start_pool, wait_idle
    from raydr.validation.report import best_row, export

    cloudpickle.register_pickle_by_value(__import__(__name__))
    tree = _cfg(tmp_path, tiny_dataset, tiny_model_dir, negatives, **_RESUMABLE).model_dump(
        mode="json"
    )
    tree["training"]["keep"] = {"best": 1, "newest": 1}  # the default
    # The ledger under this test's folder: the default `runs/` is the checkout's, where an
    # earlier run's ledger would close this run's checkpoints before they were validated.
    tree["output_dir"] = str(tmp_path / "runs")
    tree["validation"] = {"enabled": True, "num_actors": 1, "num_cpus": 0, "num_gpus": 0}
    cfg = config.build(tree, "t").with_absolute_paths()
    pool = start_pool(cfg)
    kill = _KillAfterCommit(3, str(tmp_path / "killed-once"))
    result = fit(cfg, hook=_PoolThenKill(PoolHook(pool_name(cfg.name), cfg.name), kill))
    wait_idle(pool)
    ray.get(pool.close.remote())
    ray.kill(pool)
    # Killed after step 3 with retention on: the restart found step 3 whole, with its optimizer
    # state, and trained on exactly as the uninterrupted run did.
    assert (tmp_path / "killed-once").exists() and result.metrics["resumed_from_step"] == 3
    got, want = _losses(result), reference["losses"]
    assert [loss for _, loss in got] == pytest.approx([loss for _, loss in want], rel=1e-6)
    # What stays: the best by the validated metric and the newest; only the newest can resume.
    rows = Ledger.for_run(cfg).results(cfg.name)
    best = best_row(rows, "nDCG@10")
    run = Path(cfg.paths.train_storage) / cfg.name
    kept = {checkpoint.read(f).step: f for f in checkpoint.listed(run)}
    assert sorted(kept) == sorted({best["step"], 6}) and len(rows) == 6
    assert checkpoint.has_training_state(kept[6])
    assert all(not checkpoint.has_training_state(f) for s, f in kept.items() if s != 6)
    export(best, tmp_path / "exported")  # `raydr best --export` still finds its checkpoint
    # A rerun one epoch longer resumes from step 6, though Ray's record named the deleted ones.
    tree["training"]["epochs"] = 4
    again, _ = train(config.build(tree, "t"))
    assert again.metrics["resumed_from_step"] == 6 and again.metrics["step"] == 8
