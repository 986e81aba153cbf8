"""Measurements that more than one benchmark makes: encoding throughput against the matmul peak,
a training run timed until its last metric is in, and one search's figures (with their plot).

Benchmarks import this module and ``raydr.bench.common``, never each other.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from raydr.config import RaydrConfig

MODES = {  # name → (compute dtype, cast the weights to it?)
    "fp32": ("fp32", False),
    "bf16-autocast": ("bf16", False),
    "bf16": ("bf16", True),
}


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


def encoding(
    *,
    data: Path,
    model: str,
    n: int,
    max_lengths: list[int],
    modes: list[str],
    batch_size: int,
    threads: int = 0,
    seed: int = 0,
) -> dict[str, Any]:
    """Encode one seeded sample of ``n`` passages per (mode, max length, bucketing); each row
    gives passages/s, real tokens/s, padding, and real-token FLOP/s over the same-run matmul peak."""
    import torch
    from transformers import AutoTokenizer

    from raydr.bench.common import machine
    from raydr.config import ModelConfig
    from raydr.data.tables import load_corpus
    from raydr.data.text import passage_texts
    from raydr.model.encoder import DualEncoder, pick_device, resolve_model_path
    from raydr.retrieval.encode import encode, tokenize

    torch.set_num_threads(threads or os.cpu_count() or 1)
    device = pick_device()
    texts = passage_texts(load_corpus(data))
    rng = np.random.default_rng(seed)
    sample = [texts[i] for i in rng.choice(len(texts), size=min(n, len(texts)), replace=False)]
    path = resolve_model_path(model)
    tok = AutoTokenizer.from_pretrained(path)
    base = DualEncoder.from_config(ModelConfig(name=model)).eval().to(device)
    conf = base.query_tower.config
    dims = (conf.num_hidden_layers, conf.hidden_size, conf.intermediate_size)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    peaks = {name: matmul_peak(dt, device) for name, dt in dtypes.items()}

    reference: dict[int, np.ndarray] = {}
    results = []
    for max_len in max_lengths:
        ids = tokenize(tok, sample, max_len)
        lengths = np.array([len(t) for t in ids])
        real_flops = encoder_flops(lengths, *dims)
        for mode in modes:
            dname, cast = MODES[mode]
            encoder = DualEncoder.from_config(ModelConfig(name=model)).eval().to(device)
            if cast:
                encoder = encoder.to(dtypes[dname])
            for bucket in (False, True):
                kw = dict(
                    pad_id=tok.pad_token_id or 0,
                    batch_size=batch_size,
                    device=device,
                    dtype=dtypes[dname],
                    bucket=bucket,
                )
                encode(encoder.encode_passages, ids[:batch_size], **kw)  # warm-up
                _sync(device)
                t = time.perf_counter()
                emb = encode(encoder.encode_passages, ids, **kw)
                _sync(device)
                dt = time.perf_counter() - t
                padded = sum(
                    len(b) * int(lengths[b].max()) for b in _plan(lengths, batch_size, bucket)
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
        "model": model,
        "passages": len(sample),
        "batch_size": batch_size,
        "matmul_peak_flops_per_s": peaks,
        "results": results,
        "summary": encoding_summary(results),
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


def encoding_summary(results: list[dict[str, Any]]) -> dict[str, Any]:
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


def time_training(name: str, cfg: RaydrConfig) -> dict[str, Any]:
    """Train ``cfg`` (validated as it says) and time it: the training loop, steps/s, and from
    the first step until the last checkpoint's metric is in the ledger."""
    from raydr.launch import train

    t0 = time.perf_counter()
    result, validated = train(cfg)  # returns once validation is complete too
    total = time.perf_counter() - t0
    if result.error:
        raise RuntimeError(f"{name}: {result.error}")
    m = result.metrics
    # From the first step until the last checkpoint's metrics are in the ledger: what a
    # user waits for. Ray's start-up and teardown (about 15 s each run) are left out.
    loop_start = m["reported_at"] - m["elapsed_s"]
    done_at = max([m["reported_at"], *(r["time"] for r in validated or [])])
    return {
        "variant": name,
        "wall_s_until_all_validated": total,
        "train_until_validated_s": done_at - loop_start,
        "training_loop_s": m["elapsed_s"],
        "steps_per_s": m["step"] / m["elapsed_s"],
        "validations": len(validated or []),
        "mean_validation_s": (
            sum(r["metrics"]["validation_s"] for r in validated) / len(validated)
            if validated
            else None
        ),
    }


def search_row(policy: str, summary: dict[str, Any], wall_s: float) -> dict[str, Any]:
    """One search's figures, as the stopping and search benchmarks record them."""
    run, without = summary["trial_steps_run"], summary["trial_steps_without_scheduler"]
    return {
        "policy": policy,
        "wall_s": wall_s,
        "trial_steps_run": run,
        "trial_steps_without_scheduler": without,
        "saved": 1 - run / max(1, without),
        "rung_checkpoints": summary["rung_checkpoints"],
        "mean_decision_lag_steps": _mean(
            [lag for t in summary["trials"] for lag in t["decision_lag_steps"].values()]
        ),
        "best_trial": (summary["best_trial"] or {}).get("config"),
        "best_metric": (summary["best_trial"] or {}).get("best_metric"),
        "validation": summary.get("validation"),
        "trials": [
            {
                "config": t["config"],
                "stopped_early": t["stopped_early"],
                "steps_run": t["last_training_step"],
                "decided_on_step": t["decided_on_step"],
                "decision_lag_steps": t["decision_lag_steps"],
                "best_metric": t["best_metric"],
                "full_corpus_metric": t.get("full_corpus_metric"),
                "cancelled_checkpoints": t.get("cancelled_checkpoints", 0),
                "error": t.get("error"),
            }
            for t in summary["trials"]
        ],
        # A failed trial is not a stopped one: its figures would flatter the policy.
        "failed_trials": sum(1 for t in summary["trials"] if t.get("error")),
    }


def steps_line(row: dict[str, Any]) -> str:
    """``policy: 40 of 64 trial-steps (38% saved) in 300 s``: how a search row's line starts."""
    failed = f"; {row['failed_trials']} trials FAILED" if row.get("failed_trials") else ""
    return (
        f"{row['policy']}{failed}: {row['trial_steps_run']} of "
        f"{row['trial_steps_without_scheduler']} trial-steps ({row['saved']:.0%} saved) in "
        f"{row['wall_s']:.0f} s"
    )


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def plot_trial_steps(payload: dict[str, Any], path: Path) -> None:
    """Steps each trial trained, per policy (hatched: stopped by the scheduler)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from raydr.atomic import save_figure

    runs = payload["runs"]
    labels = sorted({_short(t["config"]) for r in runs for t in r["trials"]})
    width = 0.8 / max(1, len(runs))
    fig, ax = plt.subplots(figsize=(max(8, 1.4 * len(labels)), 4.5))
    for k, run in enumerate(runs):
        by = {_short(t["config"]): t for t in run["trials"]}
        xs = [i + (k - (len(runs) - 1) / 2) * width for i in range(len(labels))]
        heights = [max(0, by[lab]["steps_run"]) if lab in by else 0 for lab in labels]
        bars = ax.bar(
            xs, heights, width, label=f"{run['policy']} ({run['saved']:.0%} of trial-steps saved)"
        )
        for bar, lab in zip(bars, labels, strict=True):
            if lab in by and by[lab]["stopped_early"]:
                bar.set_hatch("//")
    for rung in runs[0]["rung_checkpoints"] if runs else []:
        ax.axhline(rung, color="grey", lw=0.8, ls=":")
    ax.set_xticks(range(len(labels)), labels, fontsize=7)
    ax.set_ylabel("training steps run (hatched: stopped)")
    cpu = payload["machine"].get("cpu")
    what = payload.get("title", "Steps trained per trial under each decision policy")
    ax.set_title(f"{what} ({cpu})", fontsize=9)
    ax.legend(fontsize=8)
    save_figure(fig, path)
    plt.close(fig)


def _short(config: dict[str, Any]) -> str:
    """{'training.lr': 3e-05, 'training.temperature': 0.05} → 'lr=3e-05\ntemperature=0.05'."""
    return "\n".join(
        f"{k.rsplit('.', 1)[-1]}={v:g}" if isinstance(v, float) else f"{k.rsplit('.', 1)[-1]}={v}"
        for k, v in config.items()
    )
