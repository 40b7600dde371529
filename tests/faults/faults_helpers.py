"""A tiny tracked run, its uninterrupted records, and ways to damage a run directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from sharpscope.io import jsonsafe  # noqa: F401
from sharpscope.io.jsonsafe import without_timings
from sharpscope.track import RunDirectory, TrainConfig, train  # noqa: F401

SCRIPT = Path(sys.executable).parent / "sharpscope"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
KILLER = Path(__file__).with_name("killer.py")
TIMEOUT = 240


def tiny(**overrides: Any) -> TrainConfig:
    """MNIST-1D, 32 examples, a 40-8-10 MLP, 12 full-batch steps: measured every 3, checkpointed every 4."""
    base = TrainConfig(model={"name": "mlp", "kwargs": {"in_features": 40, "num_classes": 10, "widths": [8],
                                                         "activation": "tanh"}},
                       data="mnist1d", n=32, physical_batch_size=16, steps=12, measure_every=3, checkpoint_every=4,
                       loss="mse", optimizer_kwargs={"lr": 0.5})
    return base.with_overrides(overrides)


_REFERENCES: dict[str, list[dict[str, Any]]] = {}


def reference_records(cfg: TrainConfig, tmp_root: Path) -> list[dict[str, Any]]:
    """The records of an uninterrupted run of ``cfg`` (computed once per config and session, in
    a folder under ``tmp_root``)."""
    key = jsonsafe.dumps(cfg.to_dict(), sort_keys=True)
    if key not in _REFERENCES:
        folder = tmp_root / f"reference-{len(_REFERENCES)}"
        train(cfg, folder)
        _REFERENCES[key] = RunDirectory(folder).read_metrics()
    return _REFERENCES[key]


def same_records(run: RunDirectory, expected: list[dict[str, Any]]) -> bool:
    """The run's records equal ``expected`` exactly, in order, wall-clock fields aside."""
    return without_timings(run.read_metrics()) == without_timings(expected)


def flip_bit(path: Path, *, tensor: torch.Tensor | None = None, bit: int = 30) -> None:
    """Flip one bit of ``path``: bit ``bit`` (30: the top exponent bit of a float32) of the first
    element of ``tensor``'s bytes where they occur in the file, else of the middle byte."""
    data = bytearray(path.read_bytes())
    where = -1
    if tensor is not None:
        where = bytes(data).find(tensor.detach().contiguous().numpy().tobytes())
    if where < 0:
        data[len(data) // 2] ^= 1 << (bit % 8)
    else:
        data[where + bit // 8] ^= 1 << (bit % 8)
    path.write_bytes(bytes(data))


def run_killer(out: Path, point: str, nth: int, cfg: TrainConfig) -> subprocess.CompletedProcess[str]:
    """Run ``cfg`` into ``out`` in a child that SIGKILLs itself at the ``nth`` call of ``point``."""
    return subprocess.run([sys.executable, str(KILLER), str(out), point, str(nth), jsonsafe.dumps(cfg.to_dict())],
                          env=ENV, capture_output=True, text=True, timeout=TIMEOUT)
