"""Memory an algorithm may hold, as a budget of vectors, and the memory the device has free.

Estimates count the large buffers only (Krylov bases, sketches, probe blocks, cached graphs): ``n``
vectors of length ``dim`` in a dtype of ``b`` bytes need ``n · dim · b`` bytes. Free memory is
``torch.cuda.mem_get_info`` on CUDA and the kernel's ``MemAvailable`` (else ``os.sysconf`` free
pages) on the CPU; where neither is known there is no limit and the record says so.

A *memory budget* bounds the vectors an algorithm keeps at once. It is given as

* ``None`` (the default): :data:`DEFAULT_FRACTION` of the memory free when the algorithm starts,
  after the model, its data and any cached gradient graphs are in place; the other half is the
  headroom for what each product allocates while it runs (a gradient graph, a few buffers), which
  the algorithm does not hold between products;
* an integer: bytes;
* a string: ``"24 vectors"`` (or ``"24v"``), or bytes with a unit, ``"8GiB"``, ``"512MB"``, ``"2e9B"``.

Algorithms choose a strategy that fits (a full Krylov basis, a restarted one, chunked runs, a
smaller sketch) and record the strategy, the budget and the peak bytes of the vectors they held;
they refuse only what fits in no strategy.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from sharpscope.errors import ConfigError

#: The share of the free memory an algorithm's vectors may use when no budget is given.
DEFAULT_FRACTION = 0.5

MemoryBudgetSpec = int | str | None

_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z]*)\s*$")


def vector_bytes(dim: int, dtype: torch.dtype, count: int = 1) -> int:
    """Bytes of ``count`` vectors of length ``dim`` in ``dtype``."""
    return int(count) * int(dim) * torch.empty((), dtype=dtype).element_size()


def available_bytes(device: torch.device) -> int | None:
    """Free memory on ``device`` in bytes, or ``None`` where it cannot be read."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type != "cpu":
        return None
    with contextlib.suppress(OSError), open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def gib(nbytes: float) -> str:
    """``nbytes / 2³⁰`` as text with two decimals, e.g. ``"1.50 GiB"``."""
    return f"{nbytes / 2**30:.2f} GiB"


def parse_budget(spec: object, name: str = "memory_budget") -> MemoryBudgetSpec:
    """``spec`` if it is a valid budget (see the module docstring), else :class:`ConfigError`."""
    if spec is None:
        return None
    if isinstance(spec, bool) or not isinstance(spec, int | str):
        raise ConfigError(f"{name} must be None, a number of bytes, 'N vectors' or a size such as '8GiB'; "
                          f"got {spec!r}", argument=name)
    if isinstance(spec, int):
        if spec < 1:
            raise ConfigError(f"{name} must be a positive number of bytes, got {spec}", argument=name)
        return spec
    _parse(spec, name)
    return spec


def _parse(spec: str, name: str) -> tuple[str, float]:
    """``("vectors", n)`` or ``("bytes", n)`` from a budget string."""
    text = spec.strip().lower()
    match = _PATTERN.match(text)
    unit = match.group(2) if match else ""
    if match is None or unit not in (*_UNITS, "v", "vector", "vectors"):
        raise ConfigError(f"{name} {spec!r} is not 'N vectors' or a size such as '8GiB' or '512MB'", argument=name)
    value = float(match.group(1))
    if unit.startswith("v"):
        if value < 1 or value != int(value):
            raise ConfigError(f"{name} {spec!r}: the number of vectors must be a positive integer", argument=name)
        return "vectors", value
    if value * _UNITS[unit] < 1:
        raise ConfigError(f"{name} {spec!r} is below one byte", argument=name)
    return "bytes", value * _UNITS[unit]


@dataclass(frozen=True)
class MemoryBudget:
    """How many vectors of length ``dim`` an algorithm may hold at once.

    ``vectors`` is ``None`` when no limit is known (free memory unreadable and no budget given).
    ``rule`` says where the number came from, for the result's settings.
    """

    vectors: int | None
    vector_bytes: int
    rule: str
    explicit: bool = False

    @property
    def bytes(self) -> int | None:
        """``vectors · vector_bytes``, the budget in bytes (``None``: no limit known)."""
        return None if self.vectors is None else self.vectors * self.vector_bytes

    def fits(self, count: int) -> bool:
        """Whether ``count`` vectors fit."""
        return self.vectors is None or count <= self.vectors

    def record(self, strategy: str, peak_vectors: int, *, limiting: bool, **extra: object) -> dict[str, object]:
        """The memory record of a result: strategy, budget, and the peak bytes of the vectors held.

        The default budget depends on the free memory of the moment; unless it shaped the result
        (``limiting``: a restart, chunks, a smaller block or sketch) its size stays out of the record,
        so that a seeded result reproduces exactly."""
        shown = self.explicit or limiting
        return {"strategy": strategy, "budget_bytes": self.bytes if shown else None,
                "budget_vectors": self.vectors if shown else None,
                "budget_rule": self.rule if shown else f"{DEFAULT_FRACTION:.0%} of the free memory (not limiting)",
                "peak_vectors": int(peak_vectors),
                "peak_vector_bytes": int(peak_vectors) * self.vector_bytes, **extra}

    def refuse(self, what: str, need: int) -> ConfigError:
        """The error for an algorithm whose smallest strategy needs ``need`` vectors."""
        have = "no limit" if self.vectors is None else f"{self.vectors} ({gib(self.bytes or 0)}, {self.rule})"
        return ConfigError(f"{what} needs at least {need} vectors ({gib(need * self.vector_bytes)}) in any "
                           f"strategy; the memory budget allows {have}", argument="memory_budget")


def resolve_budget(spec: MemoryBudgetSpec, dim: int, dtype: torch.dtype, device: torch.device,
                   settle: Callable[[], None] | None = None,
                   agree: Callable[[int], int] | None = None) -> MemoryBudget:
    """The budget for vectors of length ``dim`` in ``dtype`` on ``device`` (see the module docstring).

    ``settle`` (an operator's :meth:`~sharpscope.curvature.operators.linear_operator.LinearOperator.settle_memory`)
    runs first when the budget depends on the free memory, so what the operator keeps between products
    is already allocated when the free memory is read. ``agree`` (a sharded operator's
    :meth:`~sharpscope.curvature.operators.linear_operator.LinearOperator.common_count`) turns the
    vectors that fit here into the fewest that fit on any process, so every process chooses the same
    strategy."""
    budget = _resolve(spec, dim, dtype, device, settle)
    if agree is None or budget.vectors is None:
        return budget
    return replace(budget, vectors=agree(budget.vectors), rule=budget.rule + ", the least over all processes")


def _resolve(spec: MemoryBudgetSpec, dim: int, dtype: torch.dtype, device: torch.device,
             settle: Callable[[], None] | None) -> MemoryBudget:
    spec = parse_budget(spec)
    if spec is None and settle is not None:
        settle()
    size = vector_bytes(dim, dtype)
    if spec is None:
        free = available_bytes(device)
        if free is None:
            return MemoryBudget(None, size, f"free memory of {device} unknown: no limit")
        return MemoryBudget(int(DEFAULT_FRACTION * free) // size, size,
                            f"{DEFAULT_FRACTION:.0%} of the {gib(free)} free on {device}")
    if isinstance(spec, int):
        return MemoryBudget(spec // size, size, f"{spec} bytes requested", explicit=True)
    kind, value = _parse(spec, "memory_budget")
    if kind == "vectors":
        return MemoryBudget(int(value), size, f"{int(value)} vectors requested", explicit=True)
    return MemoryBudget(int(math.floor(value)) // size, size, f"{spec.strip()} requested", explicit=True)
