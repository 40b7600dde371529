"""The probe set of an objective: fixed batches on one device, their example counts and ``N``.

The objective is the count-weighted mean of the batches' losses,

    L(θ) = Σ_b (n_b / N) ℓ_b(θ),      N = Σ_b n_b (summed over the ranks of a process group),

so this module holds everything that is about the data and nothing about the model: the batches
``b`` (kept on the device, or read afresh from a re-iterable source for each pass), their counts
``n_b`` (rows, or what ``count_fn`` says, e.g. tokens) and the weights ``n_b / N``. The function of
the parameters (model, loss, parameter selection, modes) is :class:`~sharpscope.curvature.Objective`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from sharpscope.curvature.operators import batches as structure
from sharpscope.curvature.operators.distributed import sum_scalar_across_ranks
from sharpscope.errors import ConfigError, DataError
from sharpscope.validation import check_cast, check_int

CountFn = Callable[[object], "int | float | Tensor"]


@dataclass(frozen=True)
class Batch:
    """One fixed batch of the probe set, on the objective's device: its data and example count."""

    data: object
    size: float

    @property
    def pair(self) -> bool:
        """Whether the batch is an ``(x, y)`` pair of tensors."""
        return structure.is_pair(self.data)

    @property
    def x(self) -> Any:
        """The model input of an ``(x, y)`` pair; the whole batch otherwise."""
        return self.data[0] if self.pair else self.data  # type: ignore[index]

    @property
    def y(self) -> Any:
        """What ``loss_fn`` receives besides the output: ``y`` of a pair, the whole batch otherwise."""
        return self.data[1] if self.pair else self.data  # type: ignore[index]


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


def _is_single(data: object) -> bool:
    """One tensor, ``(x, y)`` pair or mapping (split by ``batch_size``), not an iterable of batches."""
    return structure.is_pair(data) and isinstance(data, tuple) or isinstance(data, (Tensor, Mapping))


def _is_reiterable(data: object) -> bool:
    return isinstance(data, Iterable) and not isinstance(data, Iterator)


def _as_batches(data: object, batch_size: int | None) -> Iterable[object]:
    """The probe set as an iterable of batch structures (not yet validated one by one)."""
    if _is_single(data):
        if structure.is_pair(data) and data[0].shape[0] != data[1].shape[0]:  # type: ignore[index]
            raise DataError(f"data has {data[0].shape[0]} inputs but {data[1].shape[0]} targets")  # type: ignore[index]
        if isinstance(data, Mapping) and not structure.is_structure(data):
            raise DataError("data is a mapping without tensors")
        return [data] if batch_size is None else structure.split_rows(data, batch_size)
    if batch_size is not None:
        raise ConfigError("batch_size applies to one tensor, (x, y) pair or mapping; an iterable of batches is used "
                          "as given")
    if not isinstance(data, Iterable):
        raise DataError("data must be an (x, y) tensor pair, a tensor, a mapping of tensors, or an iterable of "
                        f"batches, got {type(data).__name__}")
    return data


def _check_structure(index: int, raw: object) -> None:
    if not structure.is_structure(raw):
        raise DataError(f"batch {index} is not a tensor, an (x, y) pair, or a tuple/list/mapping of tensors "
                        f"(got {type(raw).__name__})")
    if structure.is_pair(raw) and raw[0].shape[0] != raw[1].shape[0]:  # type: ignore[index]
        raise DataError(f"batch {index} has {raw[0].shape[0]} inputs but {raw[1].shape[0]} targets")  # type: ignore[index]


def stream_choice(data: object, stream: bool | None) -> tuple[bool, str]:
    """Whether to read ``data`` afresh at every pass, and why: ``stream`` when given (True needs a source
    that can be read again), else stream a re-iterable source that is not a list or tuple."""
    single = _is_single(data)
    if stream and not (single or _is_reiterable(data)):
        raise ConfigError("stream=True needs data that can be read again: tensors, a DataLoader or a list of "
                          f"batches, not a one-shot {type(data).__name__}")
    if not single and isinstance(getattr(data, "sampler", None), torch.utils.data.RandomSampler):
        raise ConfigError("the data loader shuffles; the probe set must be the same batches every pass "
                          "(use shuffle=False)")
    if stream is None:
        stream = not single and _is_reiterable(data) and not isinstance(data, (list, tuple))
        return bool(stream), "re-iterable source" if stream else "in-memory data"
    return bool(stream), "requested"


class ProbeSet:
    """The batches of a probe set on ``device`` (floating tensors cast to ``dtype``) and their counts.

    Args:
        data: an ``(x, y)`` tensor pair, a tensor or a mapping of tensors (one batch, split by
            ``batch_size``), or an iterable of batches (see :mod:`sharpscope.curvature.operators.batches`).
        device, dtype: where the batches go and the floating dtype they take.
        batch_size: split one tensor, pair or mapping into batches of this size.
        count_fn: ``batch -> n_b``; default the leading dimension.
        stream: read the data afresh at every pass (see :func:`stream_choice`).
        needs: keys every batch (a mapping) must hold, and ``needed_by`` names what needs them.

    Attributes: ``batches`` (a list, or :class:`StreamedBatches`),
    ``counts`` (``n_b`` of the non-empty batches), ``local_examples`` (their sum on this rank) and
    ``num_examples`` (``N``, over all ranks).
    """

    def __init__(self, data: object, *, device: torch.device, dtype: torch.dtype, batch_size: int | None = None,
                 count_fn: CountFn | None = None, stream: bool | None = None, needs: tuple[str, ...] = (),
                 needed_by: str = "") -> None:
        check_int("batch_size", batch_size, low=1, optional=True)
        self.device, self.dtype = device, dtype
        self.count_fn, self.needs, self.needed_by = count_fn, needs, needed_by
        self.streamed, self.stream_reason = stream_choice(data, stream)
        source = _as_batches(data, batch_size)
        self.batches: list[Batch] | StreamedBatches
        if self.streamed:
            counts = [self.make(i, raw).size for i, raw in enumerate(source)]
            self.batches = StreamedBatches(source, self.make, counts)
            self.counts = [c for c in counts if c > 0]
        else:
            kept = [self.make(i, raw) for i, raw in enumerate(source)]
            self.batches = [b for b in kept if b.size > 0]
            self.counts = [b.size for b in self.batches]
        if not self.counts:
            raise DataError("the probe set is empty: no examples to evaluate the loss on")
        self.local_examples = sum(self.counts)
        total = sum_scalar_across_ranks(self.local_examples, device=device)
        self.num_examples: float = int(total) if float(total).is_integer() else total

    def make(self, index: int, raw: object) -> Batch:
        """Batch ``index`` of the source, checked, placed on the device and counted."""
        _check_structure(index, raw)
        if self.needs:
            missing = [k for k in self.needs if not isinstance(raw, Mapping) or k not in raw]
            if missing:
                raise DataError(f"batch {index} has no {', '.join(missing)}: the {self.needed_by} "
                                f"loss needs a mapping holding {', '.join(self.needs)}")
        data = structure.place(raw, self.device, self.dtype)
        for before, after in zip(structure.leaves(raw), structure.leaves(data)):  # 1e300 must not become inf
            check_cast(f"batch {index}", before, after)
        return Batch(data, structure.rows(data, index) if self.count_fn is None else self._count(index, data))

    def _count(self, index: int, data: object) -> float:
        n = self.count_fn(data)  # type: ignore[misc]
        if isinstance(n, bool) or not (isinstance(n, (int, float)) or (isinstance(n, Tensor) and n.numel() == 1)):
            raise DataError(f"count_fn must return a number of examples (an int, a float or a one-element "
                            f"tensor), got {type(n).__name__} for batch {index}", argument="count_fn")
        size = float(n.item() if isinstance(n, Tensor) else n)
        if not (math.isfinite(size) and size >= 0):
            raise DataError(f"count_fn gave {size} examples for batch {index}; it must be finite and >= 0")
        return int(size) if size.is_integer() else size

    def weights(self) -> list[float]:
        """``n_b / N`` for each batch."""
        return [c / self.num_examples for c in self.counts]

    def recast(self, dtype: torch.dtype) -> ProbeSet:
        """The same probe set with floating tensors in ``dtype`` (a shallow copy; nothing re-counted)."""
        twin = copy.copy(self)
        twin.dtype = dtype
        if isinstance(self.batches, StreamedBatches):
            twin.batches = StreamedBatches(self.batches.source, twin.make, self.batches.counts)
        else:
            twin.batches = [Batch(structure.place(b.data, self.device, dtype), b.size) for b in self.batches]
        return twin
