"""Ledger, sampling strategies and watch mode, without Ray."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from raydr.config import BM25Config, SamplingConfig
from raydr.errors import RaydrError
from raydr.validation import sampling
from raydr.validation.ledger import Ledger
from raydr.validation.watch import Watcher

DOCS = [f"d{i}" for i in range(50)]
QRELS = {"q1": {"d3": 1, "d7": 0}, "q2": {"d40": 2}}


def test_random_subset_keeps_judged_docs_and_is_seeded() -> None:
    cfg = SamplingConfig(strategy="random", size=10, seed=1)
    a = sampling.select(cfg, DOCS, QRELS)
    assert {"d3", "d7", "d40"} <= set(a) and len(a) == 13
    assert a == sampling.select(cfg, DOCS, QRELS)
    assert a != sampling.select(SamplingConfig(strategy="random", size=10, seed=2), DOCS, QRELS)
    assert a == [d for d in DOCS if d in set(a)]  # corpus order


def test_pools_and_union() -> None:
    texts = [f"word{i} common" for i in range(50)]
    bm25 = sampling.bm25_pool(
        texts, DOCS, ["word5", "word9"], depth=1, cfg=BM25Config(stemmer="none")
    )
    assert bm25 == {"d5", "d9"}
    dense = sampling.run_pool({"q1": {"d1": 0.9, "d2": 0.1}, "q2": {"d8": 0.5}}, depth=1)
    assert dense == {"d1", "d8"}
    union = sampling.select(SamplingConfig(strategy="union"), DOCS, QRELS, bm25=bm25, dense=dense)
    assert set(union) == {"d3", "d7", "d40"} | bm25 | dense
    with pytest.raises(ValueError, match="needs the dense pool"):
        sampling.select(SamplingConfig(strategy="dense-pool"), DOCS, QRELS)


def test_subset_errors() -> None:
    with pytest.raises(RaydrError, match=r"size=100 is larger than the corpus allows: 50 docs, 47"):
        sampling.select(SamplingConfig(strategy="random", size=100), DOCS, QRELS)
    kept = sampling.check_queries(QRELS, ["d3"], "test")
    assert set(kept) == {"q1"}  # q2's only relevant doc is outside the subset


def test_ledger_state_is_exactly_once_and_tolerates_a_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    ledger = Ledger(path)
    ledger.append({"trial": "a", "step": 1, "checkpoint": "c1", "status": "pending"})
    ledger.append(
        {"trial": "a", "step": 1, "checkpoint": "c1", "status": "done", "metrics": {"m": 1}}
    )
    ledger.append({"trial": "a", "step": 1, "checkpoint": "c1", "status": "failed"})  # ignored
    ledger.append({"trial": "a", "step": 2, "checkpoint": "c2", "status": "pending"})
    with open(path, "a") as fh:
        fh.write('{"trial": "a", "ste')  # a crash mid-append
    again = Ledger(path)  # a new writer repairs the tail
    assert path.read_text().endswith("\n")
    assert [r["step"] for r in again.results()] == [1]
    assert again.state()[("a", 1)]["status"] == "done"
    assert [r["step"] for r in again.pending()] == [2]
    again.append({"trial": "a", "step": 2, "checkpoint": "c2", "status": "done", "metrics": {}})
    assert all(json.loads(line) for line in path.read_text().splitlines())


def test_the_ledger_reads_its_file_once_and_keeps_the_same_state_in_memory(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ledger.jsonl"
    Ledger(path).append({"trial": "a", "step": 0, "checkpoint": "c0", "status": "pending"})
    ledger = Ledger(path)  # a restarted pool: the row above comes from the file
    assert ledger.state()[("a", 0)]["status"] == "pending"
    for step in range(1, 1001):  # what the pool does per checkpoint: look up, take in, close
        assert ("a", step) not in ledger.state()
        ledger.append({"trial": "a", "step": step, "checkpoint": f"c{step}", "status": "pending"})
        status = "done" if step % 3 else "cancelled"
        row = {"trial": "a", "step": step, "checkpoint": f"c{step}", "status": status}
        ledger.append({**row, "metrics": {"m": step}} if status == "done" else row)
    # A closing row after the first is ignored in memory as in the file.
    ledger.append({"trial": "a", "step": 3, "checkpoint": "c3", "status": "done", "metrics": {}})
    assert ledger.reads == 1
    fresh = Ledger(path)
    assert ledger.state() == fresh.state() and ledger.rows() == fresh.rows()
    assert ledger.state()[("a", 3)]["status"] == "cancelled"
    assert [r["step"] for r in ledger.pending()] == [0]
    # Another writer's rows (another process) come in at the next look, by reading only the
    # bytes added; this ledger's own next row lands after them, in file order.
    fresh.append({"trial": "b", "step": 1, "checkpoint": "b1", "status": "pending"})
    size = path.stat().st_size
    ledger.append({"trial": "b", "step": 2, "checkpoint": "b2", "status": "pending"})
    assert ("b", 1) in ledger.state() and ledger.reads == 2
    assert [r["step"] for r in ledger.rows()[-2:]] == [1, 2]
    assert ledger.rows() == Ledger(path).rows() and path.stat().st_size > size
    ledger.state()
    assert ledger.reads == 2  # nothing new: a size check, no read


def test_a_corrupt_ledger_line_in_the_middle_is_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    ledger = Ledger(path)
    ledger.append({"trial": "a", "step": 1, "checkpoint": "c1", "status": "pending"})
    with open(path, "a") as fh:
        fh.write('{"trial": "a", "st\n')  # damaged, then more rows after it
    ledger.append({"trial": "a", "step": 2, "checkpoint": "c2", "status": "pending"})
    with pytest.raises(RaydrError, match=rf"{path}:2: corrupt ledger line"):
        Ledger(path).rows()


def test_watch_ignores_half_written_and_hidden_folders(tmp_path: Path) -> None:
    watcher = Watcher(tmp_path, settle_s=0.3)
    foreign = tmp_path / "checkpoint-500"
    foreign.mkdir()
    (foreign / "config.json").write_text("{}")
    assert watcher.poll() == []  # no weights yet
    (foreign / "model.safetensors").write_bytes(b"x" * 10)
    assert watcher.poll() == []  # just appeared: maybe still being written
    (foreign / "model.safetensors").write_bytes(b"x" * 20)  # still growing
    time.sleep(0.35)
    assert watcher.poll() == []  # changed since the last poll
    time.sleep(0.35)
    assert watcher.poll() == [foreign]  # unchanged for settle_s: complete
    assert watcher.poll() == []  # reported once
    hidden = tmp_path / ".checkpoint_step_0000001.abc.tmp"  # raydr's atomic temp name
    hidden.mkdir()
    (hidden / "raydr.json").write_text("{}")
    ours = tmp_path / "checkpoint_step_0000002"
    ours.mkdir()
    (ours / "raydr.json").write_text("{}")
    assert watcher.poll() == [ours]  # raydr checkpoints appear by rename: ready at once


def test_watch_waits_for_every_file_of_a_checkpoint_copied_record_first(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    from transformers import AutoTokenizer

    from raydr.config import ModelConfig
    from raydr.model.encoder import DualEncoder
    from raydr.training import checkpoint

    src = checkpoint.write(
        tmp_path / "src",
        DualEncoder.from_config(ModelConfig(name=str(tiny_model_dir))),
        AutoTokenizer.from_pretrained(tiny_model_dir),
        {},
        step=3,
        epoch=0,
    )
    watched = tmp_path / "storage"
    dst = watched / checkpoint.dir_name(3)
    dst.mkdir(parents=True)
    watcher = Watcher(watched, settle_s=0)
    # As Ray's storage copy may do it: file by file in place, the record first.
    files = sorted(p for p in src.rglob("*") if p.is_file())
    files.sort(key=lambda p: p.name != checkpoint.META)
    for i, path in enumerate(files):
        target = dst / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        data = path.read_bytes()
        target.write_bytes(data[: len(data) // 2])  # half a file first
        assert watcher.poll() == [], f"ready with {path.name} half written"
        target.write_bytes(data)
        if i < len(files) - 1:
            assert watcher.poll() == [], f"ready after {i + 1} of {len(files)} files"
            with pytest.raises(RaydrError, match="incomplete checkpoint"):
                checkpoint.read(dst)
    assert watcher.poll() == [dst]
    assert checkpoint.read(dst).step == 3


def test_a_free_validator_takes_rungs_first_then_the_trial_served_longest_ago() -> None:
    from raydr.validation.queue import Job, pick

    def job(trial: str, step: int, seq: int, rung: bool = False) -> Job:
        return Job(trial, step, f"/c/{trial}/{step}", rung=rung, seq=seq)

    waiting = [job("a", 4, 1), job("a", 8, 2), job("b", 4, 3), job("c", 12, 4, rung=True)]
    assert pick(waiting, {}, "rungs_first").step == 12  # the rung, though it came last
    assert pick(waiting, {}, "fifo") is waiting[0]
    rest = waiting[:3]
    # a was served more recently than b: b's turn, though a's checkpoints came first.
    assert pick(rest, {"a": 7, "b": 5}, "rungs_first") is rest[2]
    assert pick(rest, {"a": 7, "b": 5}, "fifo") is rest[0]
    # A trial never served goes before one served; within a trial, the oldest checkpoint.
    assert pick(rest, {"b": 5}, "rungs_first") is rest[0]
