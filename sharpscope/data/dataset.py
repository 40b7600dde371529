"""The in-memory dataset container every loader returns."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from sharpscope.errors import ConfigError, DataError
from sharpscope.validation import check_cast, check_int


@dataclass(frozen=True)
class ArrayDataset:
    """Inputs ``x`` and targets ``y`` held as tensors (first dimension = examples).

    ``name`` says where the data came from (e.g. ``"cifar10[:5000]"``); ``meta`` records how it
    was preprocessed (standardization, statistics used, ...) so results can say so. ``meta`` does
    not take part in equality.

    >>> ds = ArrayDataset(torch.zeros(3, 2), torch.tensor([0, 1, 1]), "toy")
    >>> len(ds.subset(2))
    2
    """

    x: Tensor
    y: Tensor
    name: str
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.x, Tensor) or not isinstance(self.y, Tensor):
            raise DataError(
                f"dataset {self.name!r}: x and y must be torch tensors, "
                f"got {type(self.x).__name__} and {type(self.y).__name__}"
            )
        if self.x.dim() == 0 or self.y.dim() == 0:
            raise DataError(f"dataset {self.name!r}: x and y need an example dimension")
        if self.x.shape[0] != self.y.shape[0]:
            raise DataError(
                f"dataset {self.name!r}: x has {self.x.shape[0]} examples but y has "
                f"{self.y.shape[0]} (shapes {tuple(self.x.shape)} and {tuple(self.y.shape)})"
            )
        if self.x.shape[0] == 0:
            raise DataError(f"dataset {self.name!r} is empty")

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def device(self) -> torch.device:
        """Device of the inputs."""
        return self.x.device

    def subset(self, n: int) -> ArrayDataset:
        """The first ``n`` examples (``n`` in 1..len); views, no copy."""
        check_int("subset size", n, low=1)
        if n > len(self):
            raise DataError(f"dataset {self.name!r} has {len(self)} examples, asked for the first {n}")
        if n == len(self):
            return self
        return replace(self, x=self.x[:n], y=self.y[:n], name=f"{self.name}[:{n}]", meta=dict(self.meta))

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> ArrayDataset:
        """Move to ``device``; ``dtype`` (a floating dtype) applies to floating tensors only.

        Integer labels stay integer; floating targets (regression, soft labels) follow ``dtype``.
        """
        if dtype is not None and not dtype.is_floating_point:
            raise ConfigError(f"dataset dtype must be a floating dtype, got {dtype}")

        def move(t: Tensor, what: str) -> Tensor:
            cast = t.to(device=device, dtype=dtype if (dtype is not None and t.is_floating_point()) else None)
            return check_cast(f"{self.name} {what}", t, cast)

        return replace(self, x=move(self.x, "inputs"), y=move(self.y, "targets"), meta=dict(self.meta))
