"""Data-parallel launch: the process group from ``torchrun``'s environment, each rank's shard, rank-0 decisions.

Under ``torchrun --nproc_per_node=W`` every process sees ``WORLD_SIZE``, ``RANK`` and
``LOCAL_RANK`` (and the rendezvous address). :func:`init_distributed` starts the process group
from them — gloo on CPU, NCCL on CUDA with rank ``r`` on GPU ``LOCAL_RANK`` — and does nothing
without them, so one command runs in one process or in many.

Sharding. Every rank loads the whole data set and keeps a contiguous block: rank ``r`` of ``W``
holds examples ``[⌊rN/W⌋, ⌊(r+1)N/W⌋)`` (block sizes differ by at most one). The curvature
objects weight each batch by ``n_b / N`` with ``N`` summed over ranks
(:mod:`sharpscope.curvature.operators.distributed`), so the objective is the single-process one whatever
the split, except that BatchNorm in ``batch`` mode (or training mode) normalises with the
statistics of each rank's own batches, as DDP without SyncBatchNorm does.

Run directories and printed output belong to rank 0: :func:`on_rank0` runs a function there
and hands its result (or its :class:`~sharpscope.errors.SharpscopeError`) to every rank, so all
ranks take the same branch.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import os
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from sharpscope.curvature.operators.distributed import from_rank0, is_distributed, world_size
from sharpscope.data import ArrayDataset
from sharpscope.errors import ConfigError, DataError, SharpscopeError

T = TypeVar("T")
SCHEME = "contiguous"


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; else a device that exists here and computes:
    ``cpu``, ``cuda``/``cuda:N`` (N below the number of GPUs) or ``mps`` where available."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"device {name!r} is not a device (try cpu, cuda, cuda:1 or auto)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r}: CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ConfigError(f"device {name!r}: MPS is not available on this machine")
    elif dev.type != "cpu":
        raise ConfigError(f"device {name!r}: sharpscope computes on cpu, cuda[:N] or mps (or auto), not {dev.type}")
    return dev


def rank() -> int:
    """The rank of the process (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def torchrun_env() -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` from ``torchrun``'s variables, or None outside a multi-process launch."""
    raw = {name: os.environ.get(name) for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    if raw["WORLD_SIZE"] is None or raw["WORLD_SIZE"] == "1":
        return None
    try:
        r, w, local = int(raw["RANK"] or "-1"), int(raw["WORLD_SIZE"] or "0"), int(raw["LOCAL_RANK"] or "0")
    except ValueError:
        raise ConfigError(f"torchrun environment is not numeric: {raw}") from None
    if w < 2 or not 0 <= r < w or local < 0:
        raise ConfigError(f"torchrun environment is inconsistent (RANK must be in 0..WORLD_SIZE-1): {raw}")
    return r, w, local


def init_distributed(device: torch.device) -> torch.device:
    """Join the ``torchrun`` process group if launched by it; return the device this rank computes on.

    Without a multi-process launch (or with a group already started by the caller) nothing is
    initialised. A group started here is destroyed when the process exits. On CUDA the rank uses
    GPU ``LOCAL_RANK`` unless ``device`` names one.
    """
    env = torchrun_env()
    if is_distributed() or env is None:
        return local_device(device)
    r, w, local = env
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=r, world_size=w)
    atexit.register(_destroy)
    return device


def _destroy() -> None:
    """Leave the group at exit. On gloo, a barrier first (at most a minute), so no rank closes its
    connections while another still reads from them; then the group is destroyed."""
    if is_distributed():
        if dist.get_backend() == "gloo":
            with contextlib.suppress(RuntimeError):  # a peer gone or stuck: nothing left to wait for
                dist.monitored_barrier(timeout=datetime.timedelta(seconds=60))
        dist.destroy_process_group()


def local_device(device: torch.device) -> torch.device:
    """``device``, with an index-less ``cuda`` pinned to this rank's current GPU under a process group."""
    if device.type == "cuda" and device.index is None and is_distributed():
        return torch.device("cuda", torch.cuda.current_device())
    return device


def shard_bounds(n: int, num_shards: int | None = None, index: int | None = None) -> tuple[int, int]:
    """``[⌊rN/W⌋, ⌊(r+1)N/W⌋)``: the examples of shard ``index`` (this rank) of ``num_shards`` (the world
    size). A shard is empty when ``n < W``."""
    w = world_size() if num_shards is None else num_shards
    r = rank() if index is None else index
    return r * n // w, (r + 1) * n // w


def shard_dataset(data: ArrayDataset) -> ArrayDataset:
    """The contiguous block of ``data`` that belongs to the rank (views; the data set itself with one process).

    Raises :class:`DataError` when some rank would get no example (a fixed probe or training set
    must give every rank a part of the objective).
    """
    if world_size() == 1:
        return data
    if len(data) < world_size():
        raise DataError(f"{data.name}: {len(data)} example(s) cannot be split over {world_size()} ranks; "
                        "every rank needs at least one")
    lo, hi = shard_bounds(len(data))
    return ArrayDataset(data.x[lo:hi], data.y[lo:hi], f"{data.name}[{lo}:{hi}]", dict(data.meta))


def sharding(n: int) -> dict[str, Any]:
    """How ``n`` examples are split over the ranks, for the record."""
    w = world_size()
    sizes = [hi - lo for lo, hi in (shard_bounds(n, w, r) for r in range(w))]
    return {"scheme": SCHEME, "world_size": w, "examples_per_rank": sizes}


def on_rank0(fn: Callable[[], T]) -> T:
    """``fn()`` evaluated on rank 0 only; every rank returns its result or raises its error.

    A :class:`SharpscopeError` is re-raised as it is on every rank; any other exception is
    re-raised on rank 0 and becomes a ``SharpscopeError`` naming it elsewhere, so no rank waits
    for a broadcast that never comes.
    """
    if not is_distributed():
        return fn()
    result: Any = None
    failure: BaseException | None = None
    if rank() == 0:
        try:
            result = fn()
        except Exception as e:  # every rank must reach the broadcast below
            failure = e
    shared = failure if isinstance(failure, SharpscopeError) or failure is None else \
        SharpscopeError(f"rank 0 failed: {type(failure).__name__}: {failure}")
    result, shared = from_rank0((result, shared))
    if failure is not None:
        raise failure
    if shared is not None:
        raise shared
    return result


def gather_to_rank0(obj: T) -> list[T] | None:
    """Every rank's ``obj`` (a picklable object), as a list by rank on rank 0 and None elsewhere."""
    if not is_distributed():
        return [obj]
    out: list[Any] | None = [None] * world_size() if rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out
