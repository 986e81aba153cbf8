"""Batched encoding: tokenise once, sort by length so batches carry little padding, run in bf16.

Tokenising is split from encoding so a warm validator can tokenise its corpus subset once and
re-encode it for every checkpoint.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import numpy as np
import torch

EmbedFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (B, L) ids, mask → (B, D)


def tokenize(
    tokenizer, texts: Sequence[str], max_length: int, chunk: int = 4096
) -> list[np.ndarray]:
    """Token ids per text, truncated to ``max_length``, unpadded. → N arrays of int32."""
    out: list[np.ndarray] = []
    for start in range(0, len(texts), chunk):
        enc = tokenizer(
            list(texts[start : start + chunk]),
            truncation=True,
            max_length=max_length,
            padding=False,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        out.extend(np.asarray(ids, dtype=np.int32) for ids in enc["input_ids"])
    return out


def batches(lengths: np.ndarray, batch_size: int, bucket: bool = True) -> list[np.ndarray]:
    """Index batches; with ``bucket`` longest-first so each batch pads to a similar length.

    Longest first also means the first batch shows the peak memory straight away.
    """
    order = np.argsort(-lengths, kind="stable") if bucket else np.arange(len(lengths))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def pad(token_ids: Sequence[np.ndarray], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest. → ids (B, L) int64, mask (B, L) int64."""
    width = max(len(t) for t in token_ids)
    ids = np.full((len(token_ids), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(token_ids), width), dtype=np.int64)
    for row, t in enumerate(token_ids):
        ids[row, : len(t)] = t
        mask[row, : len(t)] = 1
    return torch.from_numpy(ids), torch.from_numpy(mask)


def autocast(device: torch.device, dtype: torch.dtype):
    """bf16 autocast on ``device``; a no-op context for fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.inference_mode()
def encode(
    embed: EmbedFn,
    token_ids: Sequence[np.ndarray],
    *,
    pad_id: int,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    bucket: bool = True,
    progress: bool = False,
    desc: str = "encode",
) -> np.ndarray:
    """Embed every text. → (N, D) float32, rows in the input order."""
    device = torch.device(device)
    lengths = np.fromiter((len(t) for t in token_ids), dtype=np.int64, count=len(token_ids))
    plan = batches(lengths, batch_size, bucket)
    out: np.ndarray | None = None
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(token_ids), desc=desc, unit="text", mininterval=2.0)
    with autocast(device, dtype):
        for idx in plan:
            ids, mask = pad([token_ids[i] for i in idx], pad_id)
            emb = embed(ids.to(device, non_blocking=True), mask.to(device, non_blocking=True))
            if out is None:
                out = np.empty((len(token_ids), emb.shape[-1]), dtype=np.float32)
            out[idx] = emb.float().cpu().numpy()
            if bar is not None:
                bar.update(len(idx))
    if bar is not None:
        bar.close()
    if out is None:  # no texts
        return np.zeros((0, 0), dtype=np.float32)
    return out
