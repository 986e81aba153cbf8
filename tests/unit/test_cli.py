"""The CLI end to end on a tiny dataset: real Parquet, a real tiny BERT, real faiss and bm25s."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from raydr.cli import main


def _job(tmp_path: Path, dataset: Path, model: Path | str = "all-MiniLM-L6-v2") -> Path:
    job = tmp_path / "job.yaml"
    job.write_text(
        f"name: t\noutput_dir: {tmp_path / 'runs'}\nmodel:\n  name: {model}\n"
        "  passage_max_length: 128\n"  # the tiny BERT's positions
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
    # A query length past the model's 128 positions: one line naming the field.
    assert main(["evaluate", str(job), "-q", "model.query_max_length=200"]) == 2
    assert "model.query_max_length=200, but" in _one_error_line(capsys)


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


def _one_error_line(capsys) -> str:
    """What a failing command printed on stderr: exactly one `raydr: error:` line, no trace."""
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("raydr: error: "), err
    return err


def test_each_class_of_user_error_is_one_line_and_exit_2(
    tmp_path: Path, tiny_beir: Path, capsys
) -> None:
    job = _job(tmp_path, tiny_beir)  # a raw BEIR folder, not imported
    # data
    assert main(["evaluate", str(job), "-q"]) == 2
    assert "import-beir" in _one_error_line(capsys)
    assert main(["import-beir", str(tmp_path / "missing"), str(tmp_path / "out")]) == 2
    assert "missing" in _one_error_line(capsys)
    # config
    assert main(["evaluate", str(job), "model.poolng=cls"]) == 2
    assert "did you mean 'pooling'" in _one_error_line(capsys)
    (tmp_path / "bad.yaml").write_text("model: [unclosed\n")
    assert main(["evaluate", str(tmp_path / "bad.yaml")]) == 2
    assert "bad.yaml" in _one_error_line(capsys)
    # command line: argparse's usage dump and SystemExit become one line and a return value
    assert main(["evaluate", str(job), "--bogus"]) == 2
    assert "unrecognized arguments: --bogus" in _one_error_line(capsys)
    assert main(["train"]) == 2
    assert "required: config" in _one_error_line(capsys)
    assert main(["nope"]) == 2
    assert "invalid choice: 'nope'" in _one_error_line(capsys)
    # an unreachable cluster (a port nobody listens on)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    assert main(["validate", str(job), str(ckpt), f"ray.address=127.0.0.1:{port}"]) == 2
    assert f"ray.address='127.0.0.1:{port}': cannot connect" in _one_error_line(capsys)


def test_a_damaged_ledger_row_is_a_user_error_and_a_bug_is_one_line_with_a_log(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    ledger = tmp_path / "validation.jsonl"
    ledger.write_text('{"trial": "t", "step": 1, "status": "done", "metrics": {"nDCG@10": 1}}\n')
    assert main(["best", str(ledger)]) == 2
    assert "validation.jsonl:1: corrupt ledger line" in _one_error_line(capsys)
    ledger.write_text(
        '{"trial": "t", "step": 1, "status": "done", "checkpoint": "c", "metrics": {"R@1": 1}}\n'
    )

    def bug(*args):  # a fault inside raydr itself (no user input can cause it)
        raise ZeroDivisionError("boom")

    monkeypatch.setattr("raydr.validation.report.best_row", bug)
    code = main(["best", str(ledger)])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "unexpected ZeroDivisionError: boom" in err
    log = Path(err.split("traceback in ")[1].split(";")[0])
    assert "Traceback" in log.read_text() and "def bug" not in err
    log.unlink()


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


def test_mine_negatives_writes_unjudged_bm25_neighbours(
    tmp_path: Path, tiny_dataset: Path, capsys
) -> None:
    import pyarrow.parquet as pq

    from raydr.data.tables import load_qrels

    job = _job(tmp_path, tiny_dataset)
    out = tmp_path / "negatives.parquet"
    assert main(["mine-negatives", str(job), "--depth", "3"]) == 2  # no training.negatives
    assert "training.negatives" in _one_error_line(capsys)
    overrides = ["training.split=test", f"training.negatives={out}"]
    assert main(["mine-negatives", str(job), "--depth", "3", *overrides]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "out": str(out),
        "queries": 5,
        "min_negatives": 3,
    }
    qrels = load_qrels(tiny_dataset, "test")
    topics = {"q0": "bio", "q1": "astro", "q2": "geo", "q3": "code", "q4": "food"}
    for qid, negatives in zip(*pq.read_table(out).to_pydict().values(), strict=True):
        assert len(negatives) == 3 and not set(negatives) & set(qrels[qid])
        # Topics share no words, so BM25's nearest unjudged docs are the query's own topic.
        assert all(doc.startswith(topics[qid]) for doc in negatives), (qid, negatives)


def test_every_command_and_benchmark_module_declares_its_verbs(capsys) -> None:
    """The CLI has no hand-written registry: a module under raydr/commands or raydr/bench that
    runs something but declares no ``VERBS`` would silently vanish from ``raydr --help``."""
    import importlib
    import pkgutil

    import raydr.bench
    import raydr.commands
    from raydr.cli import declared

    support = {"raydr.bench.common", "raydr.bench.measure"}
    for package in (raydr.commands, raydr.bench):
        for info in pkgutil.iter_modules(package.__path__):
            name = f"{package.__name__}.{info.name}"
            if name not in support:
                assert importlib.import_module(name).VERBS, name
    benches = {verb.name for verb in declared(raydr.bench)}
    assert {"encode", "search", "stopping", "autoscale", "gpu", "validation-fidelity"} <= benches
    commands = [verb.name for verb in declared(raydr.commands)]
    # Workflow order: data in (the offline collections beside it), negatives, then the rest.
    assert commands[:5] == [
        "import-beir",
        "import-training",
        "build-debian",
        "build-manpages",
        "mine-negatives",
    ]
    assert {"train", "tune", "validate", "evaluate", "bm25", "best", "compare"} <= set(commands)
    # And each is reachable: `raydr bench encode --help` parses through the discovered verb.
    with pytest.raises(SystemExit) as done:
        main(["bench", "encode", "--help"])
    assert done.value.code == 0 and "--max-lengths" in capsys.readouterr().out
