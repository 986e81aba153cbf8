"""``raydr bench mining``: how fresh are dynamic negatives, and what does freshness cost.

Over the checkpoints of one real training run (plus the base model as step 0), the whole
training corpus and the training queries are encoded once per checkpoint (cached as .npy, so a
rerun only re-derives the figures). From those embeddings it replays what each negative source
would have served at every checkpoint and compares it with the exact top-k of the *current*
model there (the oracle):

- ``bm25``: the static BM25 negatives;
- ``refresh``: the index of the newest full refresh (every ``--refresh-every`` steps), its
  query and doc embeddings both from that refresh's checkpoint, published one checkpoint late
  (a refresh takes time; training uses the previous index meanwhile);
- ``refresh+nystrom``: the same refreshes, and at every other checkpoint the stale docs corrected
  by a Nyström map fitted on ``--landmarks`` re-encoded docs, queries re-encoded (cheap).

Costs per source: passages encoded, wall time of those encodes on this machine, and the bytes of
the published index. Nyström fidelity: the mean cosine of corrected and stale embeddings to the
truly re-encoded ones, against the number of landmarks.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from raydr.verb import Verb


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", type=Path, help="the training job YAML (model, data, training)")
    p.add_argument("run", type=Path, help="folder holding the run's checkpoint_* folders")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--cache", type=Path, default=Path("bench-out/mining-cache"))
    p.add_argument("--k", type=int, default=30, help="negatives per query compared (top-k)")
    p.add_argument("--refresh-every", type=int, default=30, help="steps between full refreshes")
    p.add_argument("--landmarks", type=int, default=512, help="Nyström landmarks per correction")
    p.add_argument("--ridge", type=float, default=1.0, help="Nyström regularisation (relative)")
    p.add_argument(
        "--landmark-grid", type=int, nargs="+", default=[32, 64, 128, 256, 384, 512, 1024, 2048]
    )
    p.add_argument("--max-queries", type=int, default=None, help="training queries compared")
    p.add_argument("--out", type=Path, default=Path("bench-out/mining.json"))


def checkpoints(cfg, run: Path) -> list[tuple[int, str]]:
    """(step, path) of the base model (step 0) and every checkpoint of ``run``, by step."""
    from raydr.training import checkpoint

    folders = sorted(
        (p for p in run.iterdir() if p.is_dir() and checkpoint.is_raydr(p)), key=checkpoint.step_of
    )
    return [(0, cfg.model.name), *((checkpoint.step_of(p), str(p)) for p in folders)]


def embed_checkpoints(cfg, models: list[tuple[int, str]], cache: Path) -> dict[int, dict]:
    """Encode the corpus and the training queries with every model, once (cached).

    → {step: {"docs": (N, D), "queries": (Q, D), "encode_s": seconds for the docs}}."""
    import json

    from raydr import atomic
    from raydr.data.groups import build_rows
    from raydr.data.tables import load_corpus
    from raydr.data.text import passage_texts
    from raydr.retrieval.dense import DenseRetriever
    from raydr.training import checkpoint

    corpus = load_corpus(cfg.data.path)
    passages = passage_texts(corpus)
    rows = build_rows(cfg.data.path, cfg.training.split)
    cache.mkdir(parents=True, exist_ok=True)
    out: dict[int, dict] = {}
    for step, path in models:
        docs_f, queries_f, meta_f = (
            cache / f"step{step:07d}-docs.npy",
            cache / f"step{step:07d}-queries.npy",
            cache / f"step{step:07d}.json",
        )
        if not meta_f.exists():
            retriever = DenseRetriever(*checkpoint.load(path, cfg.model), cfg)
            t0 = time.perf_counter()
            docs = retriever.embed(passages, "passages", progress=True)
            encode_s = time.perf_counter() - t0
            queries = retriever.embed([r.query for r in rows], "queries")
            with atomic.atomic_path(docs_f) as tmp, open(tmp, "wb") as f:
                np.save(f, docs)
            with atomic.atomic_path(queries_f) as tmp, open(tmp, "wb") as f:
                np.save(f, queries)
            atomic.write_json(meta_f, {"step": step, "path": path, "encode_s": encode_s})
            print(f"encoded step {step}: {len(docs)} docs in {encode_s:.0f} s", flush=True)
        meta = json.loads(meta_f.read_text())
        out[step] = {
            "docs": np.load(docs_f),
            "queries": np.load(queries_f),
            "encode_s": meta["encode_s"],
        }
    return out


def main(args: argparse.Namespace) -> None:
    import os

    import torch

    from raydr import config
    from raydr.bench.common import machine, write_json
    from raydr.data.groups import build_rows, load_negatives
    from raydr.data.tables import load_corpus

    torch.set_num_threads(os.cpu_count() or 1)
    cfg = config.load(args.config, args.overrides).with_absolute_paths()
    models = checkpoints(cfg, args.run)
    emb = embed_checkpoints(cfg, models, args.cache)
    steps = sorted(emb)
    doc_ids = load_corpus(cfg.data.path).column("doc_id").to_pylist()
    rows = build_rows(cfg.data.path, cfg.training.split)
    n_q = min(len(rows), args.max_queries or len(rows))
    where = {d: i for i, d in enumerate(doc_ids)}
    judged = [[where[d] for d in (*r.positives, r.query_id) if d in where] for r in rows[:n_q]]
    bm25 = load_negatives(cfg.training.negatives) if cfg.training.negatives else {}
    static = [[where[d] for d in bm25.get(r.query_id, [])[: args.k]] for r in rows[:n_q]]
    refreshes = [s for s in steps if _is_refresh(s, steps, args.refresh_every)]
    n_docs, dim = emb[steps[0]]["docs"].shape
    per_passage_s = float(np.mean([emb[s]["encode_s"] for s in steps])) / n_docs

    overlap: dict[str, list[tuple[int, float]]] = {"bm25": [], "refresh": [], "refresh+nystrom": []}
    for s in steps[1:]:
        oracle = _top(emb[s]["queries"][:n_q], emb[s]["docs"], judged, args.k)
        before = [c for c in steps if c < s]  # the index in use while the model is s
        r = max(c for c in refreshes if c < s)
        c = before[-1]
        served = {
            "bm25": static,
            "refresh": _top(emb[r]["queries"][:n_q], emb[r]["docs"], judged, args.k),
            "refresh+nystrom": _top(
                emb[c]["queries"][:n_q],
                emb[c]["docs"]
                if c in refreshes
                else _corrected(emb, r, c, args.landmarks, args.ridge),
                judged,
                args.k,
            ),
        }
        for name, negatives in served.items():
            overlap[name].append((s, _overlap(negatives, oracle)))

    checkpoints_per_refresh = len(steps[1:]) / max(1, len([c for c in refreshes if c > 0]))
    costs = {
        "bm25": {"passages_per_checkpoint": 0.0, "index_mb": _static_mb(static)},
        "refresh": {"passages_per_checkpoint": n_docs / checkpoints_per_refresh},
        "refresh+nystrom": {
            "passages_per_checkpoint": n_docs / checkpoints_per_refresh
            + args.landmarks * (1 - 1 / checkpoints_per_refresh),
            "passages_per_checkpoint_landmarks_in_validation_subset": n_docs
            / checkpoints_per_refresh,
        },
    }
    index_mb = (n_docs * dim + len(rows) * dim) * 4 / 2**20
    for name in ("refresh", "refresh+nystrom"):
        costs[name]["index_mb"] = index_mb
    for name, c in costs.items():
        c["encode_s_per_checkpoint"] = c["passages_per_checkpoint"] * per_passage_s
        scores = [o for _, o in overlap[name]]
        c[f"mean_overlap_at_{args.k}"] = float(np.mean(scores))

    fidelity = {
        ridge: _fidelity(emb, refreshes, steps, args.landmark_grid, ridge)
        for ridge in sorted({0.0, args.ridge})
    }
    t_sample = _sampler_cost(emb[steps[len(steps) // 2]], rows, judged, n_q)
    payload = {
        "benchmark": "mining",
        "machine": machine(),
        "config": str(args.config),
        "run": str(args.run),
        "k": args.k,
        "refresh_every": args.refresh_every,
        "refresh_steps": refreshes,
        "landmarks": args.landmarks,
        "corpus_docs": n_docs,
        "training_queries": n_q,
        "encode_s_per_passage": per_passage_s,
        "overlap": overlap,
        "costs": costs,
        "nystrom_fidelity": fidelity,
        "shared_encode": _shared_encode(cfg, n_docs, per_passage_s),
        "search": t_sample,
    }
    write_json(args.out, payload)
    plot(payload, args.out.with_suffix(".png"))
    for name, c in costs.items():
        print(
            f"{name:<16} overlap@{args.k} with the current model's top-{args.k}: "
            f"{c[f'mean_overlap_at_{args.k}']:.3f}  passages/checkpoint "
            f"{c['passages_per_checkpoint']:.0f} ({c['encode_s_per_checkpoint']:.0f} s)  "
            f"index {c['index_mb']:.1f} MB"
        )
    for ridge, rows_ in fidelity.items():
        for row in rows_:
            print(
                f"ridge {ridge:g} landmarks {row['landmarks']:>5}: cosine to re-encoded "
                f"{row['corrected']:.4f} (stale {row['stale']:.4f})"
            )
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


def _is_refresh(step: int, steps: list[int], every: int) -> bool:
    """Replays the pool's rule: a refresh at the first checkpoint ``every`` steps on."""
    last = 0
    for s in steps:
        if s == 0 or s - last >= every:
            last = s
            if s == step:
                return True
    return False


def _top(queries: np.ndarray, docs: np.ndarray, judged: list[list[int]], k: int) -> list[list[int]]:
    """Exact top-k doc positions per query, judged docs left out."""
    scores = queries @ docs.T
    for i, bad in enumerate(judged):
        scores[i, bad] = -np.inf
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    return [list(row) for row in top]


def _overlap(served: list[list[int]], oracle: list[list[int]]) -> float:
    """Mean |served ∩ oracle| / |oracle| over queries that have served negatives."""
    pairs = [(set(a), set(b)) for a, b in zip(served, oracle, strict=True) if a]
    return float(np.mean([len(a & b) / len(b) for a, b in pairs]))


def _corrected(emb: dict[int, dict], base: int, step: int, k: int, ridge: float) -> np.ndarray:
    """The docs of ``base`` Nyström-corrected to ``step`` through ``k`` landmarks."""
    from raydr.mining.dynamic import NystromMap, pick_landmarks

    stale, fresh = emb[base]["docs"], emb[step]["docs"]
    marks = pick_landmarks(len(stale), k, base)
    out = NystromMap(stale[marks], fresh[marks], ridge).apply(stale, normalize=True)
    out[marks] = fresh[marks]
    return out


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    num = np.sum(a * b, axis=1)
    return float(np.mean(num / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


def _fidelity(emb, refreshes, steps, grid, ridge: float) -> list[dict[str, Any]]:
    """Mean cosine to the truly re-encoded docs (landmarks left out): corrected vs stale, over
    every (refresh, later checkpoint before the next refresh) pair."""
    from raydr.mining.dynamic import NystromMap, pick_landmarks

    pairs = [(max(r for r in refreshes if r < s), s) for s in steps if s not in refreshes and s > 0]
    out = []
    for k in grid:
        corrected, stale = [], []
        for base, step in pairs:
            old, new = emb[base]["docs"], emb[step]["docs"]
            if k > len(old):
                continue
            marks = pick_landmarks(len(old), k, base)
            rest = np.setdiff1d(np.arange(len(old)), marks)
            fixed = NystromMap(old[marks], new[marks], ridge).apply(old[rest], normalize=True)
            corrected.append(_cosine(fixed, new[rest]))
            stale.append(_cosine(old[rest], new[rest]))
        out.append(
            {
                "landmarks": k,
                "corrected": float(np.mean(corrected)),
                "stale": float(np.mean(stale)),
                "pairs": [list(p) for p in pairs],
            }
        )
    return out


def _shared_encode(cfg, n_docs: int, per_passage_s: float) -> dict[str, Any]:
    """Passages encoded per refresh checkpoint: one corpus encode serving validation and
    mining, against a validation encode of the subset plus a separate corpus encode."""
    from raydr.validation.sampling import read_subset, subset_path

    path = subset_path(cfg)
    subset = len(read_subset(path)) if path.exists() else n_docs
    return {
        "validation_subset_docs": subset,
        "shared_passages": n_docs,
        "separate_passages": n_docs + subset,
        "shared_s": n_docs * per_passage_s,
        "separate_s": (n_docs + subset) * per_passage_s,
        "nystrom_checkpoint_shared_passages": subset,
    }


def _sampler_cost(emb_step: dict, rows, judged, n_q: int) -> dict[str, Any]:
    """Docs scored per query and time per query: exact top-30, and one softmax draw (τ=0.05),
    through the k-means clusters of one real checkpoint's embeddings."""
    from raydr.mining.dynamic import NegativeIndex, default_clusters, refresh

    docs = emb_step["docs"]
    qids = [r.query_id for r in rows]
    snap = refresh(0, docs, qids, emb_step["queries"], default_clusters(len(docs)))
    index = NegativeIndex(snap)
    rng = np.random.default_rng(0)
    out: dict[str, Any] = {"clusters": len(snap.clusters.sizes)}
    for what in ("top30", "softmax_draw"):
        index.scored = 0
        t0 = time.perf_counter()
        for i in range(n_q):
            exclude = judged[i]  # positions in the order the embeddings are in
            if what == "top30":
                index.top(qids[i], 30, exclude)
            else:
                index.sample(qids[i], 1, 0.05, rng, exclude)
        out[what] = {
            "docs_scored_fraction": index.scored / (n_q * len(docs)),
            "ms_per_query": 1000 * (time.perf_counter() - t0) / n_q,
        }
    return out


def _static_mb(static: list[list[int]]) -> float:
    return sum(len(r) for r in static) * 8 / 2**20


def plot(payload: dict[str, Any], path: Path) -> None:
    """Left: overlap with the current model's top-k per checkpoint, per source. Right: Nyström
    fidelity against the number of landmarks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from raydr.atomic import save_figure

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, points in payload["overlap"].items():
        xs, ys = zip(*points, strict=True)
        left.plot(xs, ys, marker="o", label=name)
    for r in payload["refresh_steps"][1:]:
        left.axvline(r, color="grey", lw=0.5, ls=":")
    left.set_xlabel("training step (the current model)")
    left.set_ylabel(f"overlap with its exact top-{payload['k']}")
    left.set_title("negatives served vs the current model's hardest")
    left.legend(fontsize=8)
    for ridge, rows in payload["nystrom_fidelity"].items():
        ks = [r["landmarks"] for r in rows]
        right.plot(
            ks, [r["corrected"] for r in rows], marker="o", label=f"corrected, ridge {ridge:g}"
        )
    right.plot(ks, [r["stale"] for r in rows], ls="--", color="grey", label="stale")
    right.set_xscale("log", base=2)
    right.set_xlabel("landmarks re-encoded")
    right.set_ylabel("mean cosine to the re-encoded docs")
    right.set_title("Nyström fidelity")
    right.legend(fontsize=8)
    m = payload["machine"]
    fig.suptitle(f"dynamic negatives ({m.get('cpu')}, {m.get('cores')} cores)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


VERBS = (
    Verb(
        "mining",
        "dynamic negatives: freshness vs the current model, Nyström fidelity, cost",
        add_arguments,
        main,
    ),
)
