"""Batch structures an objective accepts: a tensor, a tuple/list of tensors, or a mapping of tensors.

An ``(x, y)`` pair of tensors is the classic case (input, target). Any other structure is passed
on whole: tuples and lists by element, mappings (a ``dict``, a Hugging Face ``BatchEncoding``) by
key, rebuilt as plain ``dict``. Non-tensor values inside a mapping or sequence are kept as they are.
The helpers here walk such a structure: its tensor leaves, its leading (row) dimension, a slice of
its rows, and the same structure with new leaves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import cast

import torch
from torch import Tensor

from sharpscope.errors import DataError


def is_pair(data: object) -> bool:
    """An ``(x, y)`` pair: a tuple or list of exactly two tensors."""
    return isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, Tensor) for t in data)


def is_structure(data: object) -> bool:
    """A tensor, or a tuple/list/mapping holding at least one tensor at its top level."""
    if isinstance(data, Tensor):
        return True
    if isinstance(data, Mapping):
        return any(isinstance(v, Tensor) for v in data.values())
    if isinstance(data, (tuple, list)):
        return len(data) > 0 and any(isinstance(v, Tensor) for v in data)
    return False


def leaves(data: object) -> list[Tensor]:
    """The tensors of a batch, in a fixed order (mapping values in key order)."""
    if isinstance(data, Tensor):
        return [data]
    values = data.values() if isinstance(data, Mapping) else cast(Iterable[object], data)
    return [v for v in values if isinstance(v, Tensor)]


def rebuild(data: object, fn: Callable[[Tensor], Tensor]) -> object:
    """The same structure with every tensor ``t`` replaced by ``fn(t)`` (mappings become ``dict``)."""
    if isinstance(data, Tensor):
        return fn(data)
    if isinstance(data, Mapping):
        return {k: fn(v) if isinstance(v, Tensor) else v for k, v in data.items()}
    out = [fn(v) if isinstance(v, Tensor) else v for v in cast(Iterable[object], data)]
    return tuple(out) if isinstance(data, tuple) else out


def rows(data: object, index: int) -> int:
    """The leading dimension shared by every tensor of batch ``index``; one clear error otherwise."""
    dims = {int(t.shape[0]) for t in leaves(data) if t.ndim > 0}
    if any(t.ndim == 0 for t in leaves(data)) or len(dims) != 1:
        shapes = [tuple(t.shape) for t in leaves(data)]
        raise DataError(f"batch {index}: tensors of shapes {shapes} share no leading (example) dimension; "
                        "pass count_fn= to say how many examples a batch holds")
    return dims.pop()


def slice_rows(data: object, start: int, stop: int) -> object:
    """Rows ``start:stop`` of every tensor of the batch."""
    return rebuild(data, lambda t: t[start:stop])


def place(data: object, device: torch.device, dtype: torch.dtype) -> object:
    """Move every tensor to ``device``; floating tensors are cast to ``dtype``."""
    return rebuild(data, lambda t: t.to(device, dtype=dtype if t.is_floating_point() else t.dtype))


def split_rows(data: object, batch_size: int) -> list[object]:
    """Consecutive batches of ``batch_size`` rows (the last may be smaller)."""
    n = rows(data, 0)
    return [slice_rows(data, i, i + batch_size) for i in range(0, n, batch_size)]

