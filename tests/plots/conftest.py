"""Tiny run directories shared by the plot tests (built once per session, a few seconds in all)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sharpscope.experiments import get_recipe
from sharpscope.track import train

# name -> (recipe, overrides): full-batch GD (2/η), SGD + momentum with traces (momentum edge),
# full-batch SAM (SAM-edge moving with ‖g‖), and GD with a step size that diverges at once.
RUNS = {
    "gd": ("eos-gd", {"steps": 10}),
    "momentum": ("demo", {"steps": 20, "n": 1000, "test_n": 300, "measure_every": 5}),
    "sam": ("sam-edge", {"steps": 10}),
    "diverged": ("sam-edge", {"steps": 30, "optimizer": "gd", "optimizer_kwargs": {"lr": 50.0},
                              "measure_every": 100}),
}


@pytest.fixture(scope="session")
def run_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("plot-runs")
    out = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is many times faster on a shared machine
    try:
        for name, (recipe, overrides) in RUNS.items():
            train(get_recipe(recipe, "smoke", overrides), root / name)
            out[name] = root / name
    finally:
        torch.set_num_threads(threads)
    return out
