"""Rank, world size, gathers and CPU pinning, the same with and without torch.distributed.

Single-process code (tests, evaluation, a laptop run) never initialises a process group;
every helper here then acts as if it were rank 0 of a world of size 1.
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist

# torch marks this all_gather deprecated in favour of a private _functional_collectives API;
# it is still the public autograd-aware gather, so keep it and spare every worker the warning.
warnings.filterwarnings(
    "ignore", message=r"torch\.distributed\.nn\.functional\.all_gather", category=FutureWarning
)


def is_distributed() -> bool:
    """True when a default process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """This process's rank; 0 when not distributed."""
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    """Number of processes; 1 when not distributed."""
    return dist.get_world_size() if is_distributed() else 1


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank along dim 0, in rank order. (N, ...) → (W*N, ...).

    Every rank must pass the same shape. Gradients flow back to each rank's own ``x``: the
    backward sums, over all ranks, the gradient that lands on this rank's slice. The identity
    (same tensor, same graph) when not distributed or with world size 1.
    """
    if get_world_size() == 1:
        return x
    # torch.distributed.nn's all_gather is autograd-aware (plain dist.all_gather detaches);
    # its backward is a reduce-scatter (all-to-all + sum on gloo).
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)


def all_gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (N, ...) from every rank along dim 0, in rank order, without autograd:
    ids, and embeddings kept as constants. ``x`` itself when not distributed."""
    if get_world_size() == 1:
        return x
    out = [torch.empty_like(x) for _ in range(get_world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out, dim=0)


def all_gather_sizes(sizes: tuple[int, ...], device: torch.device) -> list[tuple[int, ...]]:
    """Every rank's ``sizes``, in rank order; ``[sizes]`` when not distributed.

    A cheap collective for checking that ranks agree on shapes *before* a gather whose
    mismatched shapes would fail obscurely or hang. ``device`` must suit the backend
    (CUDA for NCCL).
    """
    if get_world_size() == 1:
        return [tuple(sizes)]
    local = torch.tensor(sizes, dtype=torch.long, device=device)
    out = [torch.empty_like(local) for _ in range(get_world_size())]
    dist.all_gather(out, local)
    return [tuple(t.tolist()) for t in out]


def pin_cpus(cpus: list[int] | None) -> None:
    """Pin this process to ``cpus`` (Linux), so training and validation stop competing.

    Also sets torch's thread count to match: one thread per pinned core."""
    import os

    if cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(cpus))
        torch.set_num_threads(len(cpus))
