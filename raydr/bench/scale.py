"""``raydr bench scale``: what grows with the corpus, measured at 10^4, 10^5 and 10^6 passages.

For each size it generates a seeded synthetic corpus (``raydr.testing.synthetic``: Zipf words,
MS MARCO's passage lengths) with a fixed number of training queries, so only the corpus grows,
and measures, each in a fresh process:
- ``raydr import-beir`` and BM25 mining (``raydr mine-negatives``): seconds and peak RSS;
- building the memory-mapped training data (``raydr.data.store``, once per dataset): the same;
- a real Ray Train worker (tiny model, a few steps, no validation): its peak RSS as the loop
  reports it, twice in the same run: as the loop is now, and holding what the loop held before
  the store (every training row, ``{doc_id: passage}`` and ``{doc_id: position}`` for the whole
  corpus: ``_holding_the_corpus``), the baseline.
Up to ``--scatter-max`` passages: the time to one checkpoint's full-corpus metric through a
real validation pool of 1, 2 and 4 validators (scattered over them), and a validator's peak
RSS. Once, independent of the corpus: the ledger's cost per ``submit`` at the 1,000th checkpoint,
re-reading the file per call (before) against the state kept in memory (now).

Every slope is fitted to the measured sizes and extrapolated to MS MARCO's 8.8M passages; the
JSON marks those figures as extrapolated. The work folder (corpora, checkpoints) is deleted at
the end.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from raydr.bench.common import in_fresh_process, peak_mb
from raydr.verb import Verb

MS_MARCO = 8_841_823


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--queries", type=int, default=512, help="training queries (fixed per size)")
    p.add_argument("--steps", type=int, default=8, help="training steps per worker run")
    p.add_argument("--work", type=Path, default=Path("bench-out/scale-work"))
    p.add_argument("--out", type=Path, default=Path("bench-out/scale.json"))
    p.add_argument("--keep-work", action="store_true", help="keep the corpora and checkpoints")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--model",
        choices=["tiny", "minilm"],
        default="tiny",
        help="tiny: a 2-layer, 32-wide BERT (what the memory slopes need); minilm: the packaged "
        "all-MiniLM-L6-v2 (what a real run pays per passage: use with --sizes 10000)",
    )
    p.add_argument(
        "--scatter-max",
        type=int,
        default=100_000,
        help="largest size whose full-corpus metric is timed through a pool of 1, 2 and 4 validators",
    )


# ---------------------------------------------------------------- probes (each its own process)


def _probe_import(src: str, out: str) -> dict[str, Any]:
    from raydr.data.beir import import_beir

    t0 = time.perf_counter()
    import_beir(src, out, overwrite=True)
    return {"s": time.perf_counter() - t0, "peak_rss_mb": peak_mb()}


def _probe_mine(data: str, out: str) -> dict[str, Any]:
    from raydr.config import BM25Config
    from raydr.mining.bm25_negatives import mine_bm25_negatives

    t0 = time.perf_counter()
    mine_bm25_negatives(data, "train", out, depth=8, cfg=BM25Config())
    return {"s": time.perf_counter() - t0, "peak_rss_mb": peak_mb()}


def _probe_store(data: str, negatives: str) -> dict[str, Any]:
    from raydr.data import store

    t0 = time.perf_counter()
    td = store.ensure(data, "train", negatives)
    disk = sum(f.stat().st_size for f in Path(td.passages).iterdir()) + Path(td.rows).stat().st_size
    return {"s": time.perf_counter() - t0, "peak_rss_mb": peak_mb(), "disk_mb": disk / 2**20}


def _holding_the_corpus(loop_config: dict[str, Any]) -> None:
    """The loop as it is, in a worker that first loads what the loop held before the store:
    the baseline of the same run (a copy of the removed ``_training_data``)."""
    from raydr.data.groups import build_rows, load_negatives
    from raydr.data.tables import load_corpus
    from raydr.data.text import passage_texts
    from raydr.training.loop import train_loop_per_worker

    cfg = loop_config["ctx"].cfg
    negatives = load_negatives(cfg.training.negatives)
    rows = build_rows(cfg.data.path, cfg.training.split, negatives)
    corpus = load_corpus(cfg.data.path)
    passage_of = dict(zip(corpus["doc_id"].to_pylist(), passage_texts(corpus), strict=True))
    doc_index = {doc: i for i, doc in enumerate(sorted(passage_of))}
    del corpus  # the old loop kept the dicts, not the Arrow table
    train_loop_per_worker(loop_config)
    assert rows and passage_of and doc_index  # held to the end, as the old loop held them


def _train_worker(cfg, baseline: bool) -> dict[str, Any]:
    from raydr.training.trainer import fit

    t0 = time.perf_counter()
    result = fit(cfg, loop=_holding_the_corpus if baseline else None)
    if result.error is not None:
        raise RuntimeError(f"the training run failed: {result.error}")
    return {
        "s": time.perf_counter() - t0,
        "peak_rss_mb": result.metrics["peak_rss_mb"],
        "checkpoint": result.checkpoint.path,
    }


def _validator_peak(validator) -> float:
    """Run inside a validator actor (``__ray_call__``): its peak RSS."""
    return peak_mb()


def _pool_figures(cfg, checkpoint: str, step: int, validators=(1, 2, 4)) -> dict[str, Any]:
    """Time to one checkpoint's full-corpus metric (the training queries over every passage)
    through a real validation pool of 1, 2 and 4 warm one-CPU validators: one validator
    validates it whole (holding the corpus, tokenised at warm-up), several share it as shards
    (``validation.shards: auto``), each reading its own passages. Also each pool's largest
    validator peak RSS. The metric must agree."""
    import ray

    from raydr.validation.ledger import Ledger
    from raydr.validation.pool import start_pool, wait_idle

    metric = cfg.eval.primary_metric
    out: dict[str, Any] = {}
    for k in validators:
        full = cfg.validation.sampling.model_copy(update={"strategy": "full"})
        over = {"enabled": True, "num_actors": k, "sampling": full}
        vcfg = cfg.model_copy(
            update={
                "name": f"{cfg.name}-pool-{k}",
                "validation": cfg.validation.model_copy(update=over),
            }
        )
        pool = start_pool(vcfg, retain=False)
        actors = ray.get(pool.actor_handles.remote())
        ray.get([a.warm.remote() for a in actors])  # untimed: a pool's validators are warm
        try:
            ray.get(pool.submit.remote("t", step, checkpoint))
            wait_idle(pool, timeout_s=3600, poll_s=0.1)
            (row,) = Ledger.for_run(vcfg).results("t")
            out[str(k)] = {
                "s": row["queued_to_done_s"],
                metric: row["metrics"][metric],
                "shards": row["metrics"].get("shards", 1),
                "validator_peak_rss_mb": max(
                    ray.get([a.__ray_call__.remote(_validator_peak) for a in actors])
                ),
            }
        finally:
            ray.get(pool.close.remote())
            for actor in [*actors, pool]:
                ray.kill(actor)
    one = out[str(validators[0])]
    for k in validators[1:]:
        out[str(k)]["time_over_one"] = out[str(k)]["s"] / one["s"]
        out[str(k)]["metric_diff"] = abs(out[str(k)][metric] - one[metric])
    return out


class _IndexReader:
    """A process that reads a published index as a training worker does."""

    def read(self, refs: list) -> dict[str, Any]:
        return _read_index(refs)


def _read_index(refs: list) -> dict[str, Any]:
    """What a training worker does with a published index: fetch it, make it searchable.
    → its private memory added, and the file mapped under the embeddings."""
    import os

    import ray

    from raydr.mining.dynamic import NegativeIndex
    from raydr.testing.memory import mapped_file, private_mb

    before = private_mb()
    index = NegativeIndex(ray.get(refs[0]))
    index.top(index.snapshot.query_ids[0], 30)
    return {
        "pid": os.getpid(),
        "private_mb_added": private_mb() - before,
        "mapped": mapped_file(index.snapshot.doc_emb.ctypes.data),
    }


def _index_figures(n: int, seed: int, dim: int = 384) -> dict[str, Any]:
    """The dynamic-negatives index of ``n`` docs x ``dim``: bytes, build time and query time,
    fp16 against fp32 in the same layout; and two readers on this node (one copy or two)."""
    import ray

    from raydr.mining.dynamic import NegativeIndex, default_clusters, refresh

    queries = 64 if n <= 100_000 else 8  # a query scores nearly every doc: seconds at 10^6
    rng = np.random.default_rng(seed)
    # Docs around 256 directions, like a trained encoder's: the cluster bounds have work to do.
    centres = rng.normal(size=(256, dim)).astype(np.float32)
    emb = centres[rng.integers(256, size=n)] + rng.normal(size=(n, dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    q = emb[rng.integers(n, size=queries)] + 0.05 * rng.normal(size=(queries, dim))
    q /= np.linalg.norm(q, axis=1, keepdims=True)  # as the encoder's (model.normalize: true)
    qids = [f"q{i}" for i in range(queries)]
    out: dict[str, Any] = {"docs": n, "dim": dim, "clusters": default_clusters(n)}
    snaps = {}
    for dtype in ("fp32", "fp16"):
        t0 = time.perf_counter()
        snap = snaps[dtype] = refresh(0, emb, qids, q, default_clusters(n), seed, dtype=dtype)
        built = time.perf_counter() - t0
        index = NegativeIndex(snap)
        timings = {}
        for what in ("top30", "softmax7"):
            index.scored, t0 = 0, time.perf_counter()
            for i, qid in enumerate(qids):
                if what == "top30":
                    index.top(qid, 30, exclude=[i])
                else:
                    index.sample(qid, 7, 0.05, np.random.default_rng(i), exclude=[i])
            timings[what] = {
                "ms_per_query": (time.perf_counter() - t0) * 1e3 / queries,
                "docs_scored_fraction": index.scored / (queries * n),
            }
        out[dtype] = {"bytes": snap.nbytes, "build_s": built, **timings}
    out["fp16_nprobe"] = _approximate(snaps["fp16"], qids)
    out["fp16_over_fp32_bytes"] = out["fp16"]["bytes"] / out["fp32"]["bytes"]
    # The index as it was before fp16: float32 embeddings, int64 cluster order and assignment.
    before = snaps["fp32"].nbytes + 12 * n
    out["fp16_over_the_float32_index_before_bytes"] = out["fp16"]["bytes"] / before
    if ray.is_initialized():
        ref = ray.put(snaps["fp16"])
        actors = [ray.remote(num_cpus=0)(_IndexReader).remote() for _ in range(2)]
        readers = ray.get([a.read.remote([ref]) for a in actors])
        for actor in actors:
            ray.kill(actor)
        del ref
        out["readers"] = readers
        out["copies_per_node"] = len({r["mapped"] for r in readers if r["mapped"]})
        out["fp16_mb"] = out["fp16"]["bytes"] / 2**20
    return out


def _approximate(snap, qids: list[str]) -> dict[str, Any]:
    """The inverted-file mode (a sixteenth of the clusters, what ``nprobe: auto`` uses from
    10^5 docs on), measured at every size against the exact index: time, top-30 recall, a
    softmax draw's total-variation distance from the exact softmax (the exact softmax mass
    outside the probed clusters, from a full scoring pass), and the bound the sampler reports."""
    import math

    from raydr.mining.dynamic import NegativeIndex

    nprobe = max(1, math.ceil(len(snap.clusters.sizes) / 16))
    exact, approx = NegativeIndex(snap), NegativeIndex(snap, nprobe)
    t0 = time.perf_counter()
    tops = [approx.top(qid, 30, exclude=[i]) for i, qid in enumerate(qids)]
    top_ms = (time.perf_counter() - t0) * 1e3 / len(qids)
    scored_top, approx.scored = approx.scored, 0
    recall = [
        len(set(a) & set(exact.top(qid, 30, exclude=[i]))) / 30
        for i, (qid, a) in enumerate(zip(qids, tops, strict=True))
    ]
    t0, bounds = time.perf_counter(), []
    for i, qid in enumerate(qids):
        approx.sample(qid, 7, 0.05, np.random.default_rng(i), exclude=[i])
        bounds.append(approx.last_tv_bound)
    sample_ms = (time.perf_counter() - t0) * 1e3 / len(qids)
    n = snap.n_docs * len(qids)
    c, tv = snap.clusters, []
    assign, docs = c.assignment(), snap.doc_emb.astype(np.float32)
    for i in range(len(qids)):
        q = snap.query_emb[i].astype(np.float64)
        logits = (docs @ q.astype(np.float32)).astype(np.float64) / 0.05
        w = np.exp(logits - logits.max())
        w[i] = 0.0  # excluded, as in the draw
        bound = c.centroids @ q + np.linalg.norm(q) * c.radius
        probed = np.isin(assign, np.argsort(-bound, kind="stable")[:nprobe])
        tv.append(1.0 - w[probed].sum() / w.sum())
    return {
        "nprobe": nprobe,
        "top30": {"ms_per_query": top_ms, "docs_scored_fraction": scored_top / n},
        "softmax7": {"ms_per_query": sample_ms, "docs_scored_fraction": approx.scored / n},
        "top30_recall": float(np.mean(recall)),
        "softmax_tv_mean": float(np.mean(tv)),
        "softmax_tv_max": float(np.max(tv)),
        "softmax_tv_bound_mean": float(np.mean(bounds)),
        "softmax_tv_bound_max": float(np.max(bounds)),
    }


def _ledger_figures(work: Path, checkpoints: int = 1000) -> dict[str, Any]:
    """Per-``submit`` cost at the ``checkpoints``-th checkpoint: a fresh read of the file (what
    every submit, long poll and release did before) against the state kept in memory."""
    from raydr.validation.ledger import Ledger, done_row, pending_row

    path = work / "ledger" / "rows.jsonl"
    path.unlink(missing_ok=True)
    ledger = Ledger(path)
    ledger.pending()  # what the pool reads at start
    metrics = {"nDCG@10": 0.5, "RR@10": 0.4, "R@100": 0.9}
    for step in range(1, checkpoints):  # per checkpoint, what the pool does: look up, take in
        assert ("t", step) not in ledger.state()
        ledger.append(pending_row("t", step, f"/c/{step}"))
        ledger.append(done_row("t", step, f"/c/{step}", metrics, attempts=1))
    key = ("t", checkpoints)

    def timed(fn, repeat: int = 20) -> float:
        t0 = time.perf_counter()
        for _ in range(repeat):
            fn()
        return (time.perf_counter() - t0) / repeat * 1e3

    before_ms = timed(lambda: key in Ledger(path).state())
    reads = ledger.reads
    now_ms = timed(lambda: key in ledger.state())
    assert key not in ledger.state()  # the 1,000th submit: look up, take in
    ledger.append(pending_row("t", checkpoints, f"/c/{checkpoints}"))
    return {
        "checkpoints": checkpoints,
        "file_bytes": path.stat().st_size,
        "lookup_ms_rereading_the_file": before_ms,
        "lookup_ms_in_memory": now_ms,
        "file_reads_before_the_1000th_submit": reads,
        "file_reads_by_the_1000th_submit": ledger.reads - reads,
    }


# ---------------------------------------------------------------- one size


def _config(work: Path, data: Path, model: str, negatives: Path, steps: int, name: str):
    from raydr import config

    tree = {
        "name": name,
        "output_dir": str(work / "runs"),
        "model": {
            "name": model,
            # fp32 for the tiny model (its figures are memory); the real one as a run would be.
            "dtype": "auto" if model == config.DEFAULT_MODEL else "fp32",
            "query_max_length": 16,
            "passage_max_length": 128,  # the tiny BERT's positions; MS MARCO's passages fit
        },
        "data": {"path": str(data), "split": "train"},
        "training": {
            "split": "train",
            "negatives": str(negatives),
            "group_size": 4,
            "batch_size": 16,
            "max_steps": steps,
            "checkpoint_every": steps,
            "num_workers": 1,
            "storage_path": str(work / "storage"),
            "keep": {"best": None},
        },
        # Off for training; the pool figures use its shape: one CPU a validator, no GPU here.
        "validation": {"enabled": False, "num_cpus": 1, "num_gpus": 0, "split": "train"},
        "eval": {"depth": 100},
        # Four logical CPUs, so four one-CPU validators can exist; the JSON names the machine's
        # real cores, and the ratio cannot beat them.
        "ray": {"num_cpus": 4, "object_store_memory": 200 * 1024**2},
    }
    return config.build(tree, "raydr bench scale").with_absolute_paths()


def _one_size(n: int, args: argparse.Namespace, model: str) -> dict[str, Any]:
    from raydr.testing.synthetic import synthetic_beir
    from raydr.training.trainer import prepare

    work = args.work / f"n{n}"
    shutil.rmtree(work, ignore_errors=True)
    t0 = time.perf_counter()
    src = synthetic_beir(work / "beir", n, args.queries, seed=args.seed)
    made_s = time.perf_counter() - t0
    data, negatives = work / "data", work / "negatives.parquet"
    row: dict[str, Any] = {"passages": n, "generate_s": made_s}
    row["import"] = in_fresh_process(_probe_import, str(src), str(data))
    shutil.rmtree(src)  # the Parquet copy is what the rest reads
    row["bm25_mining"] = in_fresh_process(_probe_mine, str(data), str(negatives))
    row["store_build"] = in_fresh_process(_probe_store, str(data), str(negatives))
    cfg = _config(work, data, model, negatives, args.steps, f"scale-{n}")
    prepare(cfg)
    row["train_worker"] = _train_worker(cfg, baseline=False)
    base = _config(work, data, model, negatives, args.steps, f"scale-{n}-baseline")
    row["train_worker_holding_the_corpus"] = _train_worker(base, baseline=True)
    row["mining_index"] = _index_figures(n, args.seed)
    if n <= args.scatter_max:
        ckpt = row["train_worker"].pop("checkpoint")
        row["full_corpus_metric"] = _pool_figures(cfg, ckpt, args.steps)
    row["train_worker"].pop("checkpoint", None)
    row["train_worker_holding_the_corpus"].pop("checkpoint", None)
    print(
        f"{n:>9} passages: worker peak RSS {row['train_worker']['peak_rss_mb']:.0f} MB "
        f"(holding the corpus {row['train_worker_holding_the_corpus']['peak_rss_mb']:.0f} MB); "
        f"import {row['import']['s']:.1f} s, BM25 {row['bm25_mining']['s']:.1f} s, "
        f"store {row['store_build']['s']:.1f} s; mining index fp16/fp32 "
        f"{row['mining_index']['fp16_over_fp32_bytes']:.3f}",
        flush=True,
    )
    if not args.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return row


# ---------------------------------------------------------------- the command

_SERIES = {
    "train worker peak RSS (MB)": ("train_worker", "peak_rss_mb"),
    "train worker holding the corpus, peak RSS (MB)": (
        "train_worker_holding_the_corpus",
        "peak_rss_mb",
    ),
    "import s": ("import", "s"),
    "import peak RSS (MB)": ("import", "peak_rss_mb"),
    "BM25 mining s": ("bm25_mining", "s"),
    "BM25 mining peak RSS (MB)": ("bm25_mining", "peak_rss_mb"),
    "store build s": ("store_build", "s"),
    "store build peak RSS (MB)": ("store_build", "peak_rss_mb"),
    "store disk (MB)": ("store_build", "disk_mb"),
}


def extrapolate(sizes: list[int], values: list[float], to: int = MS_MARCO) -> dict[str, float]:
    """A straight line through the measured points (least squares), read off at ``to``."""
    if len(sizes) < 2:
        return {}
    slope, intercept = np.polyfit(np.asarray(sizes, float), np.asarray(values, float), 1)
    return {
        "per_million": float(slope * 1e6),
        "at_8.8M_extrapolated": float(intercept + slope * to),
    }


def run(args: argparse.Namespace) -> int:
    import ray

    from raydr.bench.common import machine, publish
    from raydr.config import DEFAULT_MODEL, ModelConfig
    from raydr.errors import RaydrError
    from raydr.testing.synthetic import tiny_bert, vocabulary
    from raydr.training.checkpoint import check_model

    sizes = sorted(set(args.sizes))
    if sizes[0] < args.queries:
        raise RaydrError(f"--sizes: {sizes[0]} passages cannot hold --queries {args.queries}")
    args.work.mkdir(parents=True, exist_ok=True)
    if args.model == "minilm":
        model, described = DEFAULT_MODEL, f"{DEFAULT_MODEL} (packaged), dtype auto"
        check_model(ModelConfig(name=model))  # not installed: one line, before any corpus
    else:
        model = str(tiny_bert(args.work / "tiny-bert", vocabulary()))
        described = "tiny BERT (2 layers, 32 wide), fp32"
    try:
        rows = [_one_size(n, args, model) for n in sizes]
        ledger = _ledger_figures(args.work)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if not args.keep_work:
            shutil.rmtree(args.work, ignore_errors=True)
    fits = {name: extrapolate(sizes, [r[a][b] for r in rows]) for name, (a, b) in _SERIES.items()}
    now, before = (
        [r[key]["peak_rss_mb"] for r in rows]
        for key in ("train_worker", "train_worker_holding_the_corpus")
    )
    payload = {
        "machine": machine(),
        "model": described,
        "queries": args.queries,
        "steps": args.steps,
        "sizes": rows,
        "growth_smallest_to_largest": {
            "train_worker": now[-1] / now[0],
            "train_worker_holding_the_corpus": before[-1] / before[0],
        },
        "ledger": ledger,
        "fits": fits,
        "notes": "at_8.8M figures are straight-line extrapolations of the measured sizes",
    }
    largest = rows[-1]["mining_index"]
    timed = [r for r in rows if "full_corpus_metric" in r]
    figures = {
        f"mining index bytes at {sizes[-1]}, fp16 / fp32": largest["fp16_over_fp32_bytes"],
        f"mining index bytes at {sizes[-1]}, fp16 / the float32 index before": largest[
            "fp16_over_the_float32_index_before_bytes"
        ],
        "mining index copies per node (2 readers)": largest.get("copies_per_node"),
        f"worker peak RSS x{sizes[-1] // sizes[0]} corpus, now": now[-1] / now[0],
        f"worker peak RSS x{sizes[-1] // sizes[0]} corpus, holding the corpus": before[-1]
        / before[0],
        "ledger reads by the 1000th submit": ledger["file_reads_by_the_1000th_submit"],
        "ledger lookup ms, re-reading the file": ledger["lookup_ms_rereading_the_file"],
        "ledger lookup ms, in memory": ledger["lookup_ms_in_memory"],
    }
    if timed:
        scatter = timed[-1]["full_corpus_metric"]
        for k, v in scatter.items():
            if "time_over_one" in v:
                figures[f"full-corpus metric at {timed[-1]['passages']}, {k} validators / 1"] = v[
                    "time_over_one"
                ]
        first, last = timed[0]["full_corpus_metric"], timed[-1]["full_corpus_metric"]
        grown = timed[-1]["passages"] // timed[0]["passages"]
        for k, what in (("1", "whole"), ("4", "4 shards")):
            if grown > 1 and k in first:
                figures[f"validator peak RSS x{grown} corpus, {what}"] = (
                    last[k]["validator_peak_rss_mb"] / first[k]["validator_peak_rss_mb"]
                )
    publish(payload, args.out, figures, plot)
    return 0


def plot(payload: dict[str, Any], path: Path) -> None:
    from raydr.bench.common import save_figure, subplots

    rows = payload["sizes"]
    n = [r["passages"] for r in rows]
    fig, axes = subplots(2, 3, figsize=(15, 8))

    def lines(ax, title, series) -> None:
        for label, xs, ys in series:
            ax.plot(xs, ys, marker="o", label=label)
        ax.set_xscale("log")
        ax.set_xlabel("passages")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)

    lines(
        axes[0, 0],
        "training worker peak RSS (MB)",
        [
            (k.replace("_", " "), n, [r[k]["peak_rss_mb"] for r in rows])
            for k in ("train_worker", "train_worker_holding_the_corpus")
        ],
    )
    for ax, field, title in (
        (axes[0, 1], "s", "driver side, once: seconds"),
        (axes[0, 2], "peak_rss_mb", "driver side, once: peak RSS (MB)"),
    ):
        keys = ("import", "bm25_mining", "store_build")
        lines(ax, title, [(k.replace("_", " "), n, [r[k][field] for r in rows]) for k in keys])
    lines(
        axes[1, 0],
        "mining index (MB), 384 dims",
        [(d, n, [r["mining_index"][d]["bytes"] / 2**20 for r in rows]) for d in ("fp32", "fp16")],
    )
    lines(
        axes[1, 1],
        "mining index: ms per query",
        [
            (f"{d} {what}", n, [r["mining_index"][d][what]["ms_per_query"] for r in rows])
            for d in ("fp32", "fp16", "fp16_nprobe")
            for what in ("top30", "softmax7")
        ],
    )
    timed = [r for r in rows if "full_corpus_metric" in r]
    shards = sorted({k for r in timed for k in r["full_corpus_metric"]}, key=int)
    lines(
        axes[1, 2],
        "time to a full-corpus metric through the pool (s)",
        [
            (
                f"{k} validator(s)",
                [r["passages"] for r in timed],
                [r["full_corpus_metric"][k]["s"] for r in timed],
            )
            for k in shards
        ],
    )
    fig.suptitle(f"raydr bench scale on {payload['machine']['cpu']}, {payload['model']}")
    fig.tight_layout()
    save_figure(fig, path)


VERBS = (
    Verb("scale", "memory and time against corpus size (synthetic corpora)", add_arguments, run),
)
