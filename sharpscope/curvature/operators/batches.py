"""Batch structures an objective accepts: a tensor, a tuple/list of tensors, or a mapping of tensors.

An ``(x, y)`` pair of tensors is the classic case (input, target). Any other structure is passed
on whole: tuples and lists by element, mappings (a ``dict``, a Hugging Face ``BatchEncoding``) by
key, rebuilt as plain ``dict``. Non-tensor values inside a mapping or sequence are kept as they are.
The helpers here walk such a structure: its tensor leaves, its leading (row) dimension, a slice of
its rows, and the same structure with new leaves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, cast

import torch
from torch import Tensor

from sharpscope.errors import DataError

if TYPE_CHECKING:
    from sharpscope.curvature.operators.objective import Batch


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


class StreamedBatches:
    """A re-iterable source read afresh, batch by batch, at every pass over the probe set.

    Each pass places one batch at a time on the device (through ``make``), so device memory holds
    one batch, never the probe set. Every pass must yield the batches of the first pass, with the
    same example counts in the same order; a source that changes raises :class:`DataError`.
    """

    def __init__(self, source: Iterable[object], make: Callable[[int, object], Batch],
                 counts: list[float]) -> None:
        self.source = source
        self.make = make
        self.counts = counts

    def __len__(self) -> int:
        return sum(1 for c in self.counts if c > 0)

    def __iter__(self) -> Iterator[Batch]:
        kept = [i for i, c in enumerate(self.counts) if c > 0]
        seen = 0
        for i, raw in enumerate(self.source):
            if i >= len(self.counts):
                raise DataError(f"the data source yielded more than its {len(self.counts)} batches on a later "
                                "pass; a streamed probe set must give the same batches every pass")
            batch = self.make(i, raw)
            if batch.size != self.counts[i]:
                raise DataError(f"batch {i} held {self.counts[i]} examples on the first pass and {batch.size} "
                                "now; a streamed probe set must give the same batches every pass (no shuffling)")
            if batch.size > 0:
                seen += 1
                yield batch
        if seen != len(kept):
            raise DataError(f"the data source yielded {seen} of its {len(kept)} batches on a later pass")

    def __getitem__(self, index: int) -> Batch:
        for i, batch in enumerate(self):
            if i == index:
                return batch
        raise IndexError(index)
