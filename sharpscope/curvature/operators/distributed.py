"""Data-parallel reductions: when a ``torch.distributed`` process group is initialised, each rank's
objective holds its own shard of the probe set and these sums run across ranks (gloo on CPU,
NCCL on GPUs). Without a process group every function is the identity, so single-process code
pays nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

T = TypeVar("T")


def is_distributed() -> bool:
    """Whether a process group is initialised (``torchrun`` or ``init_process_group``)."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """The number of processes in the default group (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def sum_across_ranks(t: Tensor) -> Tensor:
    """``Σ_ranks t`` in place (identical on every rank afterwards); returns ``t``."""
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def sum_scalar_across_ranks(value: float, *, dtype: torch.dtype = torch.float64,
                            device: torch.device | str = "cpu") -> float:
    """``Σ_ranks value`` for a Python number (on ``device``: NCCL needs CUDA tensors)."""
    if not is_distributed():
        return value
    return float(sum_across_ranks(torch.tensor([value], dtype=dtype, device=device))[0])


def from_rank0(obj: T) -> T:
    """Rank 0's ``obj`` on every rank (a picklable Python object), so a choice made by timing is the same everywhere."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sum_gradients(params: Iterable[Tensor]) -> None:
    """``p.grad ← Σ_ranks p.grad`` for every parameter, in one all-reduce.

    A rank without a gradient for ``p`` (it saw no examples) contributes zeros; ``p.grad`` stays
    None only when no rank has one, exactly as in one process. Callers weight each rank's
    backward pass by ``n_b / N`` with ``N`` counting all ranks' examples, so the sum is the
    example-weighted mean gradient over the union of the shards.
    """
    if not is_distributed():
        return
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    ref = params[0]
    parts = [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params]
    present = torch.tensor([float(p.grad is not None) for p in params], dtype=ref.dtype, device=ref.device)
    flat = sum_across_ranks(torch.cat([*parts, present]))
    grads = torch.split(flat[:-len(params)], [p.numel() for p in params])
    for p, g, seen in zip(params, grads, flat[-len(params):].tolist()):
        p.grad = g.view_as(p).clone() if seen else None


def broadcast_buffers(module: nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank, as DDP's ``broadcast_buffers`` does."""
    if is_distributed():
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)
