"""Batch iteration: fixed in-order batches, and a shuffling loader that can be resumed exactly."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import torch
from torch import Tensor

from sharpscope.data.dataset import ArrayDataset
from sharpscope.errors import ConfigError
from sharpscope.validation import check_int, check_type


def batches(dataset: ArrayDataset, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    """The examples in order, ``batch_size`` at a time (the last batch may be smaller); views."""
    check_int("batch_size", batch_size, low=1)
    for i in range(0, len(dataset), batch_size):
        yield dataset.x[i:i + batch_size], dataset.y[i:i + batch_size]


class ShuffledLoader:
    """Shuffled mini-batches of a dataset held whole on one device.

    Every epoch draws one permutation from ``generator``; iterating yields the rest of the
    current epoch, and ``next_batch()`` gives an endless stream across epochs. ``state_dict()``
    records the epoch, the batches already served in it and the generator state at the start
    of the epoch (hex string: the whole state is JSON-serializable), so a loader restored with
    ``load_state_dict`` serves exactly the batches the original would have served next.
    Give the loader a generator of its own: restoring rewinds it to the start of the epoch.

    >>> ds = ArrayDataset(torch.arange(6.0)[:, None], torch.arange(6), "toy")
    >>> loader = ShuffledLoader(ds, 4, torch.Generator().manual_seed(0))
    >>> [len(y) for _, y in loader]
    [4, 2]
    """

    def __init__(self, dataset: ArrayDataset, batch_size: int, generator: torch.Generator, drop_last: bool = False,
                 device: torch.device | str | None = None) -> None:
        check_int("batch_size", batch_size, low=1)
        check_type("generator", generator, torch.Generator, "a torch.Generator")
        if drop_last and batch_size > len(dataset):
            raise ConfigError(f"drop_last with batch_size {batch_size} > {len(dataset)} examples yields no batch")
        self.dataset = dataset if device is None else dataset.to(device)
        self.batch_size = batch_size
        self.generator = generator
        self.drop_last = bool(drop_last)
        self.epoch = 0
        self._position = 0  # batches already served in this epoch
        self._perm: Tensor | None = None
        self._epoch_state: Tensor | None = None

    def __len__(self) -> int:
        """Batches per epoch."""
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _ensure_epoch(self) -> Tensor:
        if self._perm is None:
            self._epoch_state = self.generator.get_state().clone()
            perm = torch.randperm(len(self.dataset), generator=self.generator, device=self.generator.device)
            self._perm = perm.to(self.dataset.device)
        return self._perm

    def _roll_over(self) -> None:
        """Start the next epoch (a new permutation at first use) when the current one is used up."""
        if self._position >= len(self):
            self.epoch, self._position, self._perm = self.epoch + 1, 0, None

    def next_batch(self) -> tuple[Tensor, Tensor]:
        """The next batch, starting a new epoch when the current one is used up."""
        self._roll_over()
        perm = self._ensure_epoch()
        i = self._position * self.batch_size
        idx = perm[i:i + self.batch_size]
        self._position += 1
        return self.dataset.x[idx], self.dataset.y[idx]

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        """The remaining batches of the current epoch (a full epoch if it is finished)."""
        self._roll_over()
        while self._position < len(self):
            yield self.next_batch()

    def state_dict(self) -> dict[str, Any]:
        """JSON-serializable position of the loader (see the class docstring)."""
        state = cast(Tensor, self._epoch_state) if self._perm is not None else self.generator.get_state()
        return {"epoch": self.epoch, "position": self._position, "generator_state": state.cpu().numpy().tobytes().hex(),
                "num_examples": len(self.dataset), "batch_size": self.batch_size, "drop_last": self.drop_last}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict` of a loader over the same data and settings."""
        try:
            epoch, position, gen_hex = int(state["epoch"]), int(state["position"]), str(state["generator_state"])
            setting = (int(state["num_examples"]), int(state["batch_size"]), bool(state["drop_last"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"not a ShuffledLoader state: {e!r}") from None
        expected = (len(self.dataset), self.batch_size, self.drop_last)
        if setting != expected:
            raise ConfigError(f"loader state is for (num_examples, batch_size, drop_last) = {setting}, "
                              f"this loader has {expected}")
        if not 0 <= position <= len(self) or epoch < 0:
            raise ConfigError(f"loader state has position {position} outside 0..{len(self)}")
        try:
            gen_state = torch.frombuffer(bytearray.fromhex(gen_hex), dtype=torch.uint8)
            self.generator.set_state(gen_state)
        except (ValueError, RuntimeError) as e:
            raise ConfigError(f"loader state has an unusable generator state ({e})") from None
        self.epoch, self._position, self._perm = epoch, position, None
        self._ensure_epoch()
