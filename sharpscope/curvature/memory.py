"""Memory an algorithm will need, estimated before it allocates, against what the device has free.

Estimates count the large buffers only (Krylov bases, probe blocks, cached graphs): ``n`` vectors
of length ``dim`` in a dtype of ``b`` bytes need ``n · dim · b`` bytes. Free memory is
``torch.cuda.mem_get_info`` on CUDA and the kernel's ``MemAvailable`` (else ``os.sysconf`` free
pages) on the CPU; where neither is known the check passes and records ``None``.
"""

from __future__ import annotations

import os

import torch

from sharpscope.errors import ConfigError


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
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.2f} GiB"


def check_fits(what: str, need: int, device: torch.device, *, hint: str) -> dict[str, object]:
    """Raise :class:`ConfigError` when ``need`` bytes exceed the free memory of ``device``.

    Returns the record kept in a result's settings: the estimate (the free memory seen changes from
    run to run, so it stays out of results that must reproduce exactly).
    """
    free = available_bytes(device)
    if free is not None and need > free:
        raise ConfigError(f"{what} needs about {gib(need)} but {device} has {gib(free)} free; {hint}")
    return {"estimate_bytes": int(need)}
