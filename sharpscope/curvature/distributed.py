"""Data-parallel reductions: when a ``torch.distributed`` process group is initialised, each rank's
objective holds its own shard of the probe set and these sums run across ranks (gloo on CPU,
NCCL on GPUs). Without a process group every function is the identity, so single-process code
pays nothing.
"""

from __future__ import annotations

from typing import TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

T = TypeVar("T")


def is_distributed() -> bool:
    """Whether a process group is initialised (``torchrun`` or ``init_process_group``)."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
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
