"""Seeded probe vectors and a CUDA-aware stopwatch shared by the algorithms."""

from __future__ import annotations

import time
from typing import Literal, get_args

import torch
from torch import Tensor

from sharpscope.curvature.operators.linear_operator import LinearOperator
from sharpscope.errors import ConfigError
from sharpscope.validation import check_choice, check_seed

Distribution = Literal["rademacher", "gaussian"]


def make_generator(seed: int | torch.Generator | None) -> torch.Generator:
    """A CPU generator: random vectors are drawn on the CPU so a seed gives the same vectors on any
    device. ``None`` draws a fresh seed (recorded by :func:`seed_record`); the global RNG is never used.
    """
    if isinstance(seed, torch.Generator):
        if seed.device.type != "cpu":
            raise ConfigError(f"generator must be a CPU torch.Generator (draws are moved to the operator's "
                              f"device), got one on {seed.device}")
        return seed
    check_seed("seed", seed, optional=True)
    gen = torch.Generator()
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    return gen


def seed_record(seed: int | torch.Generator | None, gen: torch.Generator) -> int | str:
    """What to record as the seed of a result: the integer seed used (drawn if none was given), or
    ``"generator"`` when the caller passed a generator whose state is theirs to record."""
    return "generator" if isinstance(seed, torch.Generator) else gen.initial_seed()


def probes(op: LinearOperator, m: int, distribution: Distribution, gen: torch.Generator) -> Tensor:
    """``m`` probe vectors as the columns of a ``(dim, m)`` tensor in the operator's dtype and device.

    Rademacher entries are ±1; Gaussian entries are standard normal. Both have ``E[z zᵀ] = I``. The
    draws are the operator's own (:meth:`~LinearOperator.draw_columns`): one whole vector after
    another, so a sharded operator draws on each process exactly its slice of the same vectors.
    """
    check_choice("distribution", distribution, get_args(Distribution))
    return op.draw_columns(m, distribution, gen).to(device=op.device, dtype=op.dtype)


class Stopwatch:
    """Wall-clock seconds of GPU work: synchronises the device before reading the clock."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._sync()
        self.start = time.perf_counter()

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def seconds(self) -> float:
        """Seconds since the stopwatch was made, once the device's queued work is done."""
        self._sync()
        return time.perf_counter() - self.start
