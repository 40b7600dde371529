"""``sharpscope probe`` outputs: --operator, --out (JSON and density figure), --eigenvectors, the text histogram."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sharpscope_cli.main import app
from sharpscope_cli.probe_outputs import density_text
from typer.testing import CliRunner

from sharpscope import GGNOperator, Objective
from sharpscope.curvature import DensityResult, slq_density
from sharpscope.curvature.operators.linear_operator import MatrixOperator
from sharpscope.errors import ConfigError
from sharpscope.io import check_writable, load_eigenvectors, save_checkpoint, save_eigenvectors
from sharpscope.losses import cross_entropy
from sharpscope.models import ModelSpec

runner = CliRunner()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, ModelSpec]:
    folder = tmp_path_factory.mktemp("probe-out")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(120, 6, generator=gen)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    np.savez(folder / "data.npz", x=x.numpy(), y=y.numpy())
    spec = ModelSpec("mlp", {"in_features": 6, "num_classes": 3, "widths": [8], "activation": "tanh"})
    torch.manual_seed(0)
    ckpt = save_checkpoint(folder / "model.safetensors", spec.build(), spec=spec)
    return folder, ckpt, spec


def test_ggn_probe_writes_json_and_eigenvectors_that_round_trip(setup: tuple[Path, Path, ModelSpec],
                                                                 tmp_path: Path) -> None:
    folder, ckpt, spec = setup
    out, vec = tmp_path / "new" / "result.json", tmp_path / "vectors.safetensors"
    result = runner.invoke(app, ["probe", str(ckpt), "--data", f"npz:{folder / 'data.npz'}", "--k", "2",
                                 "--operator", "ggn", "--dtype", "float64", "--tol", "1e-10", "--json",
                                 "--out", str(out), "--eigenvectors", str(vec)])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert json.loads(out.read_text()) == printed
    assert printed["settings"]["operator"] == "ggn" and "hvp_mode" not in printed["settings"]

    stored = load_eigenvectors(vec)
    assert stored.eigenvalues.tolist() == printed["eigenvalues"]
    assert stored.settings["operator"] == "ggn" and stored.eigenvectors.shape == (stored.eigenvectors.shape[0], 2)
    torch.manual_seed(0)
    model = spec.build().double()
    assert stored.names == [n for n, _ in model.named_parameters()]
    assert {n: tuple(t.shape) for n, t in stored.per_parameter(1).items()} == {
        n: tuple(p.shape) for n, p in model.named_parameters()}
    data = np.load(folder / "data.npz")
    objective = Objective(model, cross_entropy, (torch.from_numpy(data["x"]).double(), torch.from_numpy(data["y"])))
    G = GGNOperator(objective)
    for i in range(2):  # the saved vectors are the GGN's eigenvectors of the saved eigenvalues
        v, lam = stored.eigenvectors[:, i], float(stored.eigenvalues[i])
        assert torch.linalg.norm(G.matvec(v) - lam * v) <= 1e-6 * abs(lam)


def test_table_mode_prints_the_density_histogram_and_writes_the_figure(setup: tuple[Path, Path, ModelSpec],
                                                                       tmp_path: Path) -> None:
    folder, ckpt, _ = setup
    out = tmp_path / "r.json"
    result = runner.invoke(app, ["probe", str(ckpt), "--data", f"npz:{folder / 'data.npz'}", "--density",
                                 "--density-steps", "12", "--density-runs", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "spectral density: fraction of eigenvalues per bin" in result.stdout
    assert sum(line.startswith("  [") for line in result.stdout.splitlines()) == 12
    assert (tmp_path / "r-density.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads(out.read_text())["density"]["hvps"] == 24


def test_density_histogram_masses_are_the_quadrature_weights() -> None:
    A = MatrixOperator(torch.diag(torch.tensor([0.0, 0.0, 0.0, 1.5, 4.0], dtype=torch.float64)))
    result: DensityResult = slq_density(A, num_steps=5, num_runs=3, seed=0)
    edges, mass = result.histogram(4)  # edges ≈ 0, 1, 2, 3, 4: no eigenvalue near an inner edge
    assert abs(float(edges[0])) <= 1e-10 and abs(float(edges[-1]) - 4.0) <= 1e-10
    torch.testing.assert_close(mass.sum(), torch.tensor(1.0, dtype=torch.float64), rtol=1e-12, atol=0)
    nodes, weights = result.nodes.reshape(-1), result.weights.reshape(-1)
    for k, value in ((0, 0.0), (1, 1.5), (3, 4.0)):
        expected = float(weights[(nodes - value).abs() < 1e-6].sum()) / 3
        assert expected > 0 and float(mass[k]) == pytest.approx(expected, rel=1e-12)
    assert float(mass[2]) == 0.0
    lines = density_text(result, bins=4).splitlines()
    assert len(lines) == 5 and lines[3].rstrip().endswith("0.000e+00") and "█" in lines[4]


@pytest.mark.parametrize("args, message", [
    (["--out", "{ckpt}/r.json"], "is not a folder"),
    (["--eigenvectors", "{folder}"], "is a folder"),
    (["--operator", "ef", "--per-layer"], "per_layer=True applies to the Hessian only"),
    (["--operator", "ggn", "--hvp-mode", "fd"], "hvp_mode='fd' applies to the Hessian only"),
])
def test_bad_outputs_and_options_fail_before_any_work(setup: tuple[Path, Path, ModelSpec], args: list[str],
                                                       message: str) -> None:
    folder, ckpt, _ = setup
    args = [a.format(ckpt=ckpt, folder=folder) for a in args]
    # the data path does not exist: the error must come from the options, before data are read
    result = runner.invoke(app, ["probe", str(ckpt), "--data", f"npz:{folder / 'missing.npz'}", *args])
    assert result.exit_code == 1
    assert message in result.stderr and "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1


def test_check_writable_leaves_an_existing_file_untouched(tmp_path: Path) -> None:
    target = tmp_path / "keep.json"
    target.write_text("old")
    assert check_writable(target) == target and target.read_text() == "old"
    assert check_writable(tmp_path / "a" / "b" / "new.json").parent.exists() is False
    with pytest.raises(ConfigError, match="is a folder"):
        check_writable(Path(""))


def test_eigenvector_file_rejects_a_mismatched_layout(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not fit"):
        save_eigenvectors(tmp_path / "v.safetensors", torch.ones(1), torch.ones(5, 1), names=["w"], shapes=[[4]])
    assert not (tmp_path / "v.safetensors").exists()
