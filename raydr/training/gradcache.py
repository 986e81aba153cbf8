"""GradCache (Gao et al., 2021): the loss of a large batch at the activation memory of a chunk.

A contrastive loss couples every query with every passage, so its batch cannot simply be split
into micro-batches (that would shrink the negatives). GradCache splits the *encoding* instead:

1. encode the batch chunk by chunk without a graph, keeping only the embeddings;
2. compute the loss over all embeddings (cross-batch gather and memory bank included) and
   backpropagate it to the embeddings alone, caching d loss / d embedding;
3. encode each chunk again, this time with a graph, and backpropagate the cached gradient
   through it; the chunk's activations are freed before the next one.

The result is the loss and parameter gradients of one backward over the whole batch, with peak
activation memory of one chunk. Each chunk replays the random state of its first pass, so
dropout masks in step 3 are those of step 1. Under DDP the gradients are all-reduced once, at
the last chunk of the step's last micro-batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn


def grad_cache_step(
    model: nn.Module,
    loss_fn: Callable[..., torch.Tensor],
    batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    chunk: int,
    *,
    scale: float = 1.0,
    sync: bool = True,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    **loss_kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward and backward one (micro-)batch in chunks of ``chunk`` queries.

    → (the scaled loss, the passage embeddings p (B*G, D)), both detached.

    ``batch``: q_ids (B, Lq), q_mask, p_ids (B*G, Lp), p_mask, in the losses' layout (query i owns
    passages [i*G, (i+1)*G)). ``loss_fn(q (B, D), p (B*G, D), **loss_kwargs)``; the loss is
    multiplied by ``scale`` (1 / grad_accum) before backward. ``sync``: let DDP all-reduce at
    this batch's last chunk (False for all but the last micro-batch of a step).
    """
    q_ids, q_mask, p_ids, p_mask = batch
    b = q_ids.shape[0]
    g = p_ids.shape[0] // b
    spans = [(s, min(s + chunk, b)) for s in range(0, b, chunk)]

    def encode(s: int, e: int) -> tuple[torch.Tensor, torch.Tensor]:
        with autocast():
            q, p = model(q_ids[s:e], q_mask[s:e], p_ids[s * g : e * g], p_mask[s * g : e * g])
        return q.float(), p.float()

    # 1. embeddings without a graph, remembering each chunk's random state (dropout)
    states, qs, ps = [], [], []
    with torch.no_grad():
        for s, e in spans:
            states.append(_rng_state())
            q, p = encode(s, e)
            qs.append(q)
            ps.append(p)
    q_all = torch.cat(qs).requires_grad_(True)  # (B, D)
    p_all = torch.cat(ps).requires_grad_(True)  # (B*G, D)

    # 2. the loss over the whole batch, backpropagated to the embeddings only
    loss = loss_fn(q_all, p_all, **loss_kwargs) * scale
    loss.backward()

    # 3. each chunk again, with a graph, fed the cached gradient of its embeddings
    for k, (s, e) in enumerate(spans):
        _set_rng_state(states[k])
        last = k == len(spans) - 1
        with contextlib.nullcontext() if (sync and last) else _no_sync(model):
            q, p = encode(s, e)
            torch.autograd.backward([q, p], [q_all.grad[s:e], p_all.grad[s * g : e * g]])
    return loss.detach(), p_all.detach()


def _rng_state() -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple[torch.Tensor, list[torch.Tensor] | None]) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)


def _no_sync(model: nn.Module):
    # A single worker's model is not wrapped in DDP, and has nothing to skip.
    return model.no_sync() if hasattr(model, "no_sync") else contextlib.nullcontext()
