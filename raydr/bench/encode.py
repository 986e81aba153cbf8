"""``raydr bench encode``: encoding throughput, padding waste, and FLOP/s against matmul peak.

For each (precision, max length, bucketing) it encodes the same seeded sample of passages and
reports passages/s, real (non-padding) tokens/s, and the model FLOP/s spent on real tokens as a
fraction of a same-run, same-dtype matmul: the machine's practical peak. Padding therefore
counts against the score.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

MODES = {  # name → (compute dtype, cast the weights to it?)
    "fp32": ("fp32", False),
    "bf16-autocast": ("bf16", False),
    "bf16": ("bf16", True),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, default=Path("data/scifact"), help="imported dataset")
    p.add_argument("--model", default="all-MiniLM-L6-v2")
    p.add_argument("--n", type=int, default=256, help="passages per measurement")
    p.add_argument("--max-lengths", type=int, nargs="+", default=[256, 512])
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    p.add_argument("--out", type=Path, default=Path("bench-out/encode.json"))
    p.add_argument("--seed", type=int, default=0)


def encoder_flops(lengths: np.ndarray, layers: int, d: int, ff: int) -> float:
    """Forward FLOPs of a BERT encoder over sequences of these lengths (2 per multiply-add).

    Per layer and sequence of length L: Q, K, V and output projections 8·L·d², the feed-forward
    4·L·d·ff, and attention scores plus weighted sum 4·L²·d. Embeddings and norms are noise.
    """
    L = lengths.astype(np.float64)
    return float(layers * np.sum(8 * L * d * d + 4 * L * d * ff + 4 * L * L * d))


def matmul_peak(dtype, device, size: int = 2048, seconds: float = 2.0) -> float:
    """Best sustained FLOP/s of a square matmul in ``dtype``: the practical peak."""
    import torch

    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    best, t_end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        _sync(device)
        t = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        best = max(best, 2 * size**3 / (time.perf_counter() - t))
    return best


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from transformers import AutoTokenizer

    from raydr.bench.common import machine
    from raydr.config import ModelConfig
    from raydr.data.tables import load_corpus
    from raydr.data.text import passage_texts
    from raydr.model.encoder import DualEncoder, pick_device, resolve_model_path
    from raydr.retrieval.encode import encode, tokenize

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    device = pick_device()
    texts = passage_texts(load_corpus(args.data))
    rng = np.random.default_rng(args.seed)
    sample = [texts[i] for i in rng.choice(len(texts), size=min(args.n, len(texts)), replace=False)]
    path = resolve_model_path(args.model)
    tok = AutoTokenizer.from_pretrained(path)
    base = DualEncoder.from_config(ModelConfig(name=args.model)).eval().to(device)
    conf = base.query_tower.config
    dims = (conf.num_hidden_layers, conf.hidden_size, conf.intermediate_size)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    peaks = {name: matmul_peak(dt, device) for name, dt in dtypes.items()}

    reference: dict[int, np.ndarray] = {}
    results = []
    for max_len in args.max_lengths:
        ids = tokenize(tok, sample, max_len)
        lengths = np.array([len(t) for t in ids])
        real_flops = encoder_flops(lengths, *dims)
        for mode in args.modes:
            dname, cast = MODES[mode]
            model = DualEncoder.from_config(ModelConfig(name=args.model)).eval().to(device)
            if cast:
                model = model.to(dtypes[dname])
            for bucket in (False, True):
                kw = dict(
                    pad_id=tok.pad_token_id or 0,
                    batch_size=args.batch_size,
                    device=device,
                    dtype=dtypes[dname],
                    bucket=bucket,
                )
                encode(model.encode_passages, ids[: args.batch_size], **kw)  # warm-up
                _sync(device)
                t = time.perf_counter()
                emb = encode(model.encode_passages, ids, **kw)
                _sync(device)
                dt = time.perf_counter() - t
                padded = sum(
                    len(b) * int(lengths[b].max()) for b in _plan(lengths, args.batch_size, bucket)
                )
                if mode == "fp32" and not bucket:
                    reference[max_len] = emb
                ref = reference.get(max_len)
                cos = float(np.min(np.sum(emb * ref, axis=1))) if ref is not None else None
                results.append(
                    {
                        "mode": mode,
                        "max_length": max_len,
                        "bucketing": bucket,
                        "seconds": dt,
                        "passages_per_s": len(ids) / dt,
                        "real_tokens_per_s": float(lengths.sum()) / dt,
                        "padded_tokens": padded,
                        "real_tokens": int(lengths.sum()),
                        "padding_fraction": 1 - float(lengths.sum()) / padded,
                        "real_token_flops_per_s": real_flops / dt,
                        "fraction_of_matmul_peak": real_flops / dt / peaks[dname],
                        "min_cosine_vs_fp32": cos,
                    }
                )
                print(_row(results[-1]), flush=True)
    return {
        "benchmark": "encode",
        "machine": machine(),
        "device": str(device),
        "model": args.model,
        "passages": len(sample),
        "batch_size": args.batch_size,
        "matmul_peak_flops_per_s": peaks,
        "results": results,
        "summary": _summary(results),
    }


def _plan(lengths: np.ndarray, batch_size: int, bucket: bool):
    from raydr.retrieval.encode import batches

    return batches(lengths, batch_size, bucket)


def _row(r: dict[str, Any]) -> str:
    return (
        f"{r['mode']:>13} len={r['max_length']:<4} bucket={r['bucketing']!s:<5} "
        f"{r['passages_per_s']:7.1f} p/s {r['real_tokens_per_s']:8.0f} tok/s "
        f"pad={r['padding_fraction']:.1%} peak={r['fraction_of_matmul_peak']:.2f}"
    )


def _summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    def get(mode: str, max_len: int, bucket: bool) -> dict[str, Any] | None:
        for r in results:
            if (r["mode"], r["max_length"], r["bucketing"]) == (mode, max_len, bucket):
                return r
        return None

    out: dict[str, Any] = {}
    for r in results:
        if not r["bucketing"]:
            continue
        on, off = r, get(r["mode"], r["max_length"], False)
        key = f"{r['mode']}@{r['max_length']}"
        out[f"bucketing_speedup {key}"] = on["passages_per_s"] / off["passages_per_s"]
        out[f"padded_tokens_saved {key}"] = 1 - on["padded_tokens"] / off["padded_tokens"]
        out[f"fraction_of_peak {key}"] = on["fraction_of_matmul_peak"]
        fp32 = get("fp32", r["max_length"], True)
        if fp32 is not None and r["mode"] != "fp32":
            out[f"speedup_vs_fp32 {key}"] = on["passages_per_s"] / fp32["passages_per_s"]
    return out


def plot(payload: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from raydr.atomic import save_figure

    rows = payload["results"]
    labels = sorted({(r["max_length"], r["bucketing"]) for r in rows})
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(modes)
    for j, mode in enumerate(modes):
        vals = [
            next(
                (
                    r["fraction_of_matmul_peak"]
                    for r in rows
                    if r["mode"] == mode and (r["max_length"], r["bucketing"]) == lab
                ),
                0,
            )
            for lab in labels
        ]
        ax.bar(np.arange(len(labels)) + j * width, vals, width, label=mode)
    ax.axhline(0.8, color="gray", linestyle="--", linewidth=1, label="goal 0.8")
    ax.set_xticks(np.arange(len(labels)) + width * (len(modes) - 1) / 2)
    ax.set_xticklabels([f"len {m}\n{'bucketed' if b else 'unsorted'}" for m, b in labels])
    ax.set_ylabel("real-token FLOP/s ÷ same-dtype matmul peak")
    ax.set_title(f"Encoding efficiency, {payload['model']} on {payload['machine']['cpu'][:40]}")
    ax.legend()
    save_figure(fig, path)


def main(args: argparse.Namespace) -> None:
    from raydr.bench.common import write_json

    payload = run(args)
    write_json(args.out, payload)
    plot(payload, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
