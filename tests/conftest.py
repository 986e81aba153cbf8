"""Shared fixtures: a tiny randomly initialised BERT saved to disk, a tiny BEIR dataset, and
the tiny training job (``tiny_job``) the Ray tests share."""

from __future__ import annotations

import copy
import dataclasses
import gzip
import json
import random
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCIFACT = REPO.parent / "shared" / "data" / "scifact"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """A failed test on a fake autoscaling cluster shows the head's logs (raylet, GCS, monitor)
    beside its traceback: the cluster's temp dir is gone once the test ends."""
    report = yield
    cluster = getattr(item, "funcargs", {}).get("fake_cluster")
    if report.when == "call" and report.failed and cluster is not None:
        report.sections.append(("fake cluster: the head's logs", cluster.log_tail()))
    return report


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 32-wide BERT over the topic words, saved in HF format."""
    from raydr.testing.synthetic import tiny_bert

    words = {w for text in _TOPIC_WORDS.values() for w in text.split()}
    return tiny_bert(tmp_path_factory.mktemp("tiny-bert"), words)


# Five topics with disjoint vocabularies: lexical (BM25) retrieval is easy and checkable.
_TOPIC_WORDS = {
    "bio": "cell protein gene enzyme membrane receptor mitochondria",
    "astro": "star galaxy planet orbit nebula comet telescope",
    "geo": "rock mineral volcano basalt granite sediment quartz",
    "code": "compiler function pointer kernel thread mutex cache",
    "food": "bread cheese tomato pepper garlic olive butter",
}


def write_beir(root: Path, *, docs_per_topic: int = 8, seed: int = 0, gz: bool = False) -> Path:
    """A small BEIR folder: one query per topic, its first two docs judged relevant."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    corpus, queries, qrels = [], [], []
    for t, (topic, words) in enumerate(_TOPIC_WORDS.items()):
        vocab = words.split()
        for i in range(docs_per_topic):
            doc_id = f"{topic}-{i}"
            text = " ".join(rng.choice(vocab) for _ in range(12))
            corpus.append(
                {
                    "_id": doc_id,
                    "title": f"{topic} {vocab[i % len(vocab)]}",
                    "text": text,
                    "metadata": {},
                }
            )
        queries.append({"_id": f"q{t}", "text": " ".join(vocab[:3])})
        qrels += [(f"q{t}", f"{topic}-0", 1), (f"q{t}", f"{topic}-1", 1)]
    suffix = ".jsonl.gz" if gz else ".jsonl"
    for name, rows in (("corpus", corpus), ("queries", queries)):
        with (gzip.open if gz else open)(root / f"{name}{suffix}", "wt", encoding="utf-8") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in rows)
    (root / "qrels").mkdir(exist_ok=True)
    with open(root / "qrels" / "test.tsv", "w", encoding="utf-8") as fh:
        fh.write("query-id\tcorpus-id\tscore\n")
        fh.writelines(f"{q}\t{d}\t{s}\n" for q, d, s in qrels)
    return root


@pytest.fixture(scope="session")
def tiny_beir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_beir(tmp_path_factory.mktemp("beir") / "tiny")


@pytest.fixture(scope="session")
def tiny_dataset(tiny_beir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny_beir`` imported to Parquet."""
    from raydr.data.beir import import_beir

    out = tmp_path_factory.mktemp("imported") / "tiny"
    import_beir(tiny_beir, out)
    return out


@pytest.fixture(scope="session")
def dev_dataset(tiny_beir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny_beir`` imported with 2 of its 5 test queries carved out as dev (3 stay in test)."""
    from raydr.data.beir import import_beir

    out = tmp_path_factory.mktemp("dev") / "tiny"
    import_beir(tiny_beir, out, dev_from="test", dev_queries=2)
    return out


@pytest.fixture(scope="session")
def negatives(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """BM25 hard negatives for the tiny dataset's test split (5 per query)."""
    from raydr.config import BM25Config
    from raydr.mining.bm25_negatives import mine_bm25_negatives

    out = tmp_path_factory.mktemp("negatives") / "negatives.parquet"
    counts = mine_bm25_negatives(tiny_dataset, "test", out, depth=5, cfg=BM25Config())
    assert counts == {"queries": 5, "min_negatives": 5}
    return out


def tiny_tree(name: str, tmp_path: Path, dataset: Path, model: Path) -> dict:
    """The sections every tiny end-to-end run shares: tiny model, tiny dataset, small eval."""
    return {
        "name": name,
        "output_dir": str(tmp_path / "runs"),
        "model": {
            "name": str(model),
            "dtype": "fp32",
            "query_max_length": 16,
            "passage_max_length": 32,
        },
        "data": {"path": str(dataset), "split": "test"},
        "eval": {"depth": 20, "batch_size": 8},
    }


# Each test's own Ray: two CPUs and one logical GPU (nothing here uses CUDA).
LOCAL_RAY = {"num_cpus": 2, "num_gpus": 1, "object_store_memory": 150 * 1024**2}


class Whole(dict):
    """An override that replaces its key's value instead of merging into it."""


class _Drop:
    """An override that removes its key."""

    def __repr__(self) -> str:
        return "DROP"


DROP = _Drop()


def merged(tree: dict, over: dict) -> dict:
    """A copy of ``tree`` with ``over`` merged in deeply: a plain dict merges into the section
    it names, ``Whole(...)`` or any other value replaces, ``DROP`` removes the key."""
    out = copy.deepcopy(tree)
    for key, value in over.items():
        if value is DROP:
            out.pop(key, None)
        elif isinstance(value, Whole):
            out[key] = copy.deepcopy(dict(value))
        elif isinstance(value, dict):
            out[key] = merged(out.get(key) if isinstance(out.get(key), dict) else {}, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def tiny_job(
    name: str, tmp_path: Path, dataset: Path, model: Path, negatives=None, /, **over
) -> dict:
    """The training job the Ray tests share, on ``tiny_tree``: 2 workers x batch 2 x group 2
    (``negatives`` mined, if given), 2 epochs, a checkpoint every step; one validator on a
    quarter of a logical GPU, over the full corpus. ``over`` (sections) is ``merged`` in."""
    mined = {} if negatives is None else {"negatives": str(negatives)}
    job = {
        **tiny_tree(name, tmp_path, dataset, model),
        "training": {
            "split": "test",
            **mined,
            "group_size": 2,
            "batch_size": 2,
            "epochs": 2,
            "checkpoint_every": 1,
            "num_workers": 2,
            "storage_path": str(tmp_path / "storage"),
        },
        "validation": {
            "num_actors": 1,
            "num_cpus": 0,
            "num_gpus": 0.25,
            "sampling": {"strategy": "full"},
        },
    }
    return merged(job, over)


def tiny_search_tree(name: str, tmp_path: Path, dataset: Path, model: Path, negatives) -> dict:
    """A tiny two-trial search: a learning trial (lr 3e-3), then a frozen one (1e-9), one at a
    time, 20 steps each with a checkpoint every 4, ASHA from step 4; one validator on a
    quarter of a logical GPU."""
    return tiny_job(
        name,
        tmp_path,
        dataset,
        model,
        negatives,
        training={
            "batch_size": 1,
            "epochs": 4,
            "checkpoint_every": 4,
            "num_workers": 1,
            "warmup_ratio": 0.0,
        },
        ray=LOCAL_RAY,
        tune={
            "space": {"training.lr": {"grid": [3e-3, 1e-9]}},  # a learning trial, then a frozen one
            "num_samples": 1,
            "max_concurrent_trials": 1,
            "scheduler": {"type": "asha", "grace_period": 4, "reduction_factor": 2},
            "storage_path": str(tmp_path / "tune"),
        },
    )


def write_checkpoint(root: Path, model_dir: Path, step: int, cfg) -> Path:
    """A real raydr checkpoint of the tiny model with step-dependent weights."""
    import torch
    from transformers import AutoTokenizer

    from raydr.model.encoder import DualEncoder
    from raydr.training import checkpoint

    model = DualEncoder.from_config(cfg.model)
    torch.manual_seed(step)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = root / checkpoint.dir_name(step)
    checkpoint.write(
        path,
        model,
        AutoTokenizer.from_pretrained(model_dir),
        cfg.model_dump(mode="json"),
        step=step,
        epoch=0,
    )
    return path


def ruined_copy(src: Path, dest: Path, scale: float = 1.0, seed: int = 0) -> Path:
    """A copy of the checkpoint ``src`` whose weights are drowned in N(0, scale²) noise, its
    record updated so it is still complete: a model that retrieves at about chance."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dest)
    weights = load_file(dest / "model.safetensors")
    generator = torch.Generator().manual_seed(seed)
    noisy = {
        k: v + scale * torch.randn(v.shape, generator=generator, dtype=v.dtype)
        for k, v in weights.items()
    }
    save_file(noisy, dest / "model.safetensors", metadata={"format": "pt"})
    meta = json.loads((dest / "raydr.json").read_text())
    meta["files"]["model.safetensors"] = (dest / "model.safetensors").stat().st_size
    (dest / "raydr.json").write_text(json.dumps(meta))
    return dest


def record_node_and_world(loop_config: dict) -> None:
    """raydr's training loop, after noting the node, world size and time each worker started
    with (in ``starts/`` beside the Train storage; read back with ``starts``)."""
    import json
    import os
    import time

    import ray
    import ray.train

    from raydr.training.loop import train_loop_per_worker

    ctx = ray.train.get_context()
    out = Path(loop_config["ctx"].storage).parent / "starts"
    out.mkdir(exist_ok=True)
    (out / f"{time.time_ns()}-{os.getpid()}.json").write_text(
        json.dumps(
            {
                "node": ray.get_runtime_context().get_node_id(),
                "rank": ctx.get_world_rank(),
                "world": ctx.get_world_size(),
                "t": time.time(),
            }
        )
    )
    train_loop_per_worker(loop_config)


def record_to_step(loop_config: dict, step: int) -> None:
    """``record_node_and_world``, training only up to ``step`` (a long run's first phase)."""
    ctx = loop_config["ctx"]
    training = ctx.cfg.training.model_copy(update={"max_steps": step})
    cfg = ctx.cfg.model_copy(update={"training": training})
    record_node_and_world({"ctx": dataclasses.replace(ctx, cfg=cfg)})


def starts(tmp_path: Path) -> list[dict]:
    """What ``record_node_and_world`` noted, oldest first."""
    files = sorted((tmp_path / "starts").glob("*.json"), key=lambda p: int(p.name.split("-")[0]))
    return [json.loads(p.read_text()) for p in files]
