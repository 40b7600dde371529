"""``sharpscope probe --per-layer`` through the installed entry point: JSON rows equal dense Hessian blocks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sharpscope import Objective, exact_hessian
from sharpscope.io import save_checkpoint
from sharpscope.losses import cross_entropy
from sharpscope.models import ModelSpec
from sharpscope.plots.layers import layer_curvature_figure

SCRIPT = Path(sys.executable).parent / "sharpscope"
SPEC = ModelSpec("mlp", {"in_features": 6, "num_classes": 3, "widths": [5, 4], "activation": "tanh"})


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny tensors: threads only compete on a loaded machine
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("cli-layers")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(80, 6, generator=gen)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    np.savez(folder / "data.npz", x=x.numpy(), y=y.numpy())
    torch.manual_seed(0)
    return folder, save_checkpoint(folder / "model.safetensors", SPEC.build(), spec=SPEC)


def test_per_layer_json_rows_are_the_dense_hessian_blocks(setup: tuple[Path, Path]) -> None:
    folder, ckpt = setup
    proc = run("probe", str(ckpt), "--data", f"npz:{folder / 'data.npz'}", "--per-layer", "--trace", "--k", "2",
               "--trace-matvecs", "12",
               "--json", "--dtype", "float64", "--tol", "1e-10", "--hvp-mode", "rev-rev")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    layers = out["per_layer"]["layers"]
    assert out["per_layer"]["grouping"] == "module" and [r["name"] for r in layers] == ["hidden.0", "hidden.1", "out"]

    torch.manual_seed(0)
    data = np.load(folder / "data.npz")
    x, y = torch.from_numpy(data["x"]).double(), torch.from_numpy(data["y"])
    objective = Objective(SPEC.build().double(), cross_entropy, (x, y))
    H = exact_hessian(objective)
    start = 0
    for row in layers:
        block = H[start:start + row["numel"], start:start + row["numel"]]  # groups follow parameter order
        start += row["numel"]
        np.testing.assert_allclose(row["eigenvalues"], torch.linalg.eigvalsh(block).flip(0)[:2].numpy(), rtol=1e-8)
        # Hutch++'s 4-vector sketch leaves a remainder: the trace is an estimate with a standard error
        assert abs(row["trace"]["estimate"] - float(block.trace())) <= 4 * row["trace"]["stderr"] + 1e-9
        assert row["eigenvalues"][0] <= out["eigenvalues"][0] + 1e-9
    assert start == objective.dim
    assert sum(r["hvps"] for r in layers) == out["per_layer"]["hvps"]
    fig = layer_curvature_figure(out, log=True)  # the figure reads the CLI's JSON as it is
    assert len(fig.axes) == 2 and fig.axes[0].get_xscale() == "log"


def test_per_layer_table_by_blocks(setup: tuple[Path, Path]) -> None:
    folder, ckpt = setup
    proc = run("probe", str(ckpt), "--data", f"npz:{folder / 'data.npz'}", "--per-layer", "--layer-depth", "1")
    assert proc.returncode == 0, proc.stderr
    assert "per-layer curvature (grouped by depth=1)" in proc.stdout and "hidden" in proc.stdout
    assert "cross-layer terms excluded" in proc.stdout
