"""``sharpscope landscape`` through the installed entry point (one run: the start-up alone takes
seconds), its figures and its one-line errors in-process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from sharpscope import Objective
from sharpscope.io import save_checkpoint
from sharpscope.landscape import SliceResult, pca_directions
from sharpscope.losses import cross_entropy
from sharpscope.models import ModelSpec

SCRIPT = Path(sys.executable).parent / "sharpscope"
SPEC = ModelSpec("mlp", {"in_features": 6, "num_classes": 3, "widths": [8], "activation": "tanh"})


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A center checkpoint, three earlier iterates in ``run/`` and a data file."""
    folder = tmp_path_factory.mktemp("landscape-cli")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(60, 6, generator=gen)
    np.savez(folder / "data.npz", x=x.numpy(), y=((x[:, 0] > 0).long() + (x[:, 1] > 0).long()).numpy())
    for i, seed in enumerate([1, 2, 3]):
        torch.manual_seed(seed)
        save_checkpoint(folder / "run" / f"step-{i}.safetensors", SPEC.build(), spec=SPEC)
    torch.manual_seed(0)
    save_checkpoint(folder / "final.safetensors", SPEC.build(), spec=SPEC)
    return folder


def test_pca_slice_with_path_writes_data_and_figures(run_folder: Path) -> None:
    out = run_folder / "out"
    args = ["landscape", str(run_folder / "final.safetensors"), "--data", f"npz:{run_folder / 'data.npz'}",
            "--directions", "pca", "--iterate", str(run_folder / "run"), "--dtype", "float64", "--batch-size", "25",
            "--out", str(out), "--json", "--no-figures"]
    # one thread: the tensors are tiny, and OpenMP threads competing with other processes slow them down badly
    proc = subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    assert {Path(f).name for f in record["files"]} == {"slice.npz", "slice.json"}
    assert record["directions"]["kind"] == "pca" and record["evaluations"] == 21 * 21 + 1
    result = SliceResult.load(out / "slice")
    assert result.loss.shape == (21, 21) and result.path.shape == (3, 2)
    assert result.settings["num_batches"] == 3 and result.settings["dtype"] == "float64"
    assert result.settings["checkpoint"].endswith("final.safetensors") and "--iterate" in result.settings["command"]
    torch.manual_seed(0)
    model = SPEC.build().double()
    data = np.load(run_folder / "data.npz")
    objective = Objective(model, cross_entropy, (torch.from_numpy(data["x"]).double(), torch.from_numpy(data["y"])))
    assert result.center_loss == pytest.approx(objective.loss(), rel=1e-12)
    pca = pca_directions(objective, [run_folder / "run"], k=2)
    np.testing.assert_allclose(result.path, pca.description["coordinates"], rtol=1e-10)
    # the default grid covers the path and the center
    assert result.alphas[0] < min(0, result.path[:, 0].min()) and result.alphas[-1] > result.path[:, 0].max()
    assert result.betas[0] < min(0, result.path[:, 1].min()) and result.betas[-1] > result.path[:, 1].max()


@pytest.mark.parametrize("args, message", [
    (["--directions", "interp"], "needs --other"),
    (["--directions", "pca"], "--iterate"),
    (["--alphas", "1:-1:5"], "--alphas must be (start, stop, num) with finite start < stop"),
    (["--alphas", "0:1"], "START:STOP:NUM"),
    (["--dims", "3"], "--dims must be 1 or 2"),
    (["--dims", "1", "--betas", "0:1:3"], "--betas is the second axis of a 2-D slice"),
    (["--directions", "interp", "--other", "x.safetensors", "--dims", "2"], "--dims must be 1"),
    (["--iterate", "run", "--dims", "1"], "--iterate: their path is drawn on 2-D slices only"),
    (["--other", "x.safetensors"], "--other (the checkpoint at t = 1) is for directions 'interp'"),
])
def test_bad_options_give_one_line_errors(run_folder: Path, tmp_path: Path, args: list[str], message: str) -> None:
    from sharpscope_cli.main import app

    result = CliRunner().invoke(app, ["landscape", str(run_folder / "final.safetensors"), "--data",
                                      f"npz:{run_folder / 'data.npz'}", "--out", str(tmp_path / "o"), *args])
    assert result.exit_code == 1, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("option, value", [("--bn", "train"), ("--loss", "l1"), ("--dtype", "float16"),
                                           ("--normalization", "model"), ("--method", "fast")])
def test_options_with_choices_refuse_other_values(run_folder: Path, tmp_path: Path, option: str, value: str) -> None:
    from sharpscope_cli.main import app

    result = CliRunner().invoke(app, ["landscape", str(run_folder / "final.safetensors"), "--data",
                                      f"npz:{run_folder / 'data.npz'}", "--out", str(tmp_path / "o"), option, value])
    assert result.exit_code == 2 and f"Invalid value for '{option}'" in result.stderr, result.output
    assert not (tmp_path / "o").exists()


def test_figures_interpolation_and_no_silent_overwrite(run_folder: Path, tmp_path: Path) -> None:
    from sharpscope_cli.main import app

    (tmp_path / "slice.json").write_text("{}")
    base = ["landscape", str(run_folder / "final.safetensors"), "--data", f"npz:{run_folder / 'data.npz'}", "--out",
            str(tmp_path), "--alphas", "-1:1:3", "--betas", "-1:1:3", "--vmax", "5"]
    refused = CliRunner().invoke(app, base)
    assert refused.exit_code == 1 and "--force" in refused.stderr
    forced = CliRunner().invoke(app, [*base, "--force"])
    assert forced.exit_code == 0, forced.stderr
    assert "random 2-D slice (3×3 points" in forced.stdout
    assert SliceResult.load(tmp_path / "slice").loss.shape == (3, 3)
    for name in ("contour", "surface"):
        assert all((tmp_path / f"{name}.{ext}").stat().st_size > 0 for ext in ("png", "pdf", "json"))
        stored = json.loads((tmp_path / f"{name}.json").read_text())["data"]  # what --from-figure draws again
        assert stored["figure"] == name and stored["draw"] == {"log": True, "vmax": 5.0}

    other = run_folder / "run" / "step-0.safetensors"
    line = CliRunner().invoke(app, ["landscape", str(run_folder / "final.safetensors"), "--data",
                                    f"npz:{run_folder / 'data.npz'}", "--out", str(tmp_path / "line"), "--directions",
                                    "interp", "--other", str(other), "--dtype", "float64", "--no-figures"])
    assert line.exit_code == 0, line.stderr
    result = SliceResult.load(tmp_path / "line" / "slice")
    np.testing.assert_allclose(result.alphas, np.linspace(-0.5, 1.5, 21))
    torch.manual_seed(1)  # the seed of step-0's model
    data = np.load(run_folder / "data.npz")
    at_other = Objective(SPEC.build().double(), cross_entropy,
                         (torch.from_numpy(data["x"]).double(), torch.from_numpy(data["y"]))).loss()
    assert result.loss[15] == pytest.approx(at_other, rel=1e-10)  # t = 1 is the other checkpoint


def test_the_loss_range_is_over_the_finite_losses_as_recorded_and_summarised(tmp_path: Path) -> None:
    from sharpscope_cli.landscape import summary_text

    def line(loss: list[float]) -> SliceResult:
        return SliceResult(alphas=np.array([-1.0, 0.0, 1.0]), betas=None, loss=np.array(loss), accuracy=None,
                           center_loss=0.5, center_accuracy=None, directions={"kind": "random"},
                           settings={"method": "loop"}, seconds=0.5, evaluations=3)

    finite, blown = line([2.5, 0.5, float("inf")]), line([float("nan"), float("inf"), float("-inf")])
    assert finite.loss_range == (0.5, 2.5) and blown.loss_range is None
    assert [(r.to_dict()["loss_min"], r.to_dict()["loss_max"]) for r in (finite, blown)] == [(0.5, 2.5), (None, None)]
    assert summary_text(finite, tmp_path) == (f"random 1-D slice (3 points, loop): center loss 0.5, min 0.5, max 2.5; "
                                              f"3 evaluations in 0.5 s -> {tmp_path}")
    assert "min n/a, max n/a;" in summary_text(blown, tmp_path)
