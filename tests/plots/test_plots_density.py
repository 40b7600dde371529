"""Spectral density figures from DensityResult objects, their dicts and probe JSON files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import norm

from sharpscope.curvature import MatrixOperator, slq_density
from sharpscope.errors import ConfigError, DataError
from sharpscope.io import jsonsafe
from sharpscope.plots.density import LOG_FLOOR, density_data, density_figure, load_density

# 50×50 diagonal matrix: eigenvalue 0 (×30), 1 (×15), 10 (×5); its density is 0.6 δ₀ + 0.3 δ₁ + 0.1 δ₁₀.
EIGS = torch.tensor([0.0] * 30 + [1.0] * 15 + [10.0] * 5, dtype=torch.float64)


@pytest.fixture(scope="module")
def result():
    return slq_density(MatrixOperator(torch.diag(EIGS)), num_steps=10, num_runs=400, sigma2=1e-3, seed=0)


def test_plotted_density_is_the_results_and_has_the_spectrums_mass(result) -> None:
    fig = density_figure(result)
    ax = fig.axes[0]
    (line,) = [ln for ln in ax.get_lines() if ln.get_gid() == "density"]
    grid, dens = np.asarray(line.get_xdata()), np.asarray(line.get_ydata())
    np.testing.assert_array_equal(grid, result.grid.numpy())
    np.testing.assert_array_equal(dens, result.density.numpy())
    assert ax.get_yscale() == "log" and ax.get_ylim()[0] == pytest.approx(dens.max() * LOG_FLOOR)
    # quadrature mass at each eigenvalue (mean over runs): 0.6, 0.3, 0.1 up to the random starts
    nodes, weights = result.nodes.numpy(), result.weights.numpy()
    mass = [float((weights * (np.abs(nodes - e) < 0.5)).sum() / len(nodes)) for e in (0.0, 1.0, 10.0)]
    assert mass == pytest.approx([0.6, 0.3, 0.1], abs=0.02)
    # the grid stops pad = 0.1 beyond the extreme nodes: the outer Gaussians lose their tails there
    sigma, pad = np.sqrt(result.sigma2), 0.01 * 10.0
    assert np.trapezoid(dens, grid) == pytest.approx(1 - (mass[0] + mass[2]) * norm.cdf(-pad / sigma),
                                                   abs=3e-4)  # trapezoid rule: (h²/12)·|Δf'| ≈ 1.5e-4
    keep = (grid > 0.5) & (grid < 1.5)
    assert np.trapezoid(dens[keep], grid[keep]) == pytest.approx(mass[1], abs=1e-4)
    assert "tr ≈" in ax.get_legend().get_texts()[0].get_text()
    assert density_figure(result, log=False).axes[0].get_yscale() == "linear"


def test_dict_and_probe_json_are_resmoothed_on_the_same_grid(result, tmp_path: Path) -> None:
    as_dict = json.loads(jsonsafe.dumps(result.to_dict()))  # what a JSON file holds: no grid, no density
    assert "grid" not in as_dict and "density" not in as_dict
    data = density_data([result, as_dict], labels=["object", "dict"])
    a, b = data["results"]
    np.testing.assert_allclose(b["grid"], a["grid"], rtol=1e-14)
    np.testing.assert_allclose(b["density"], a["density"], rtol=1e-10, atol=1e-300)
    assert b["trace"] == a["trace"] == pytest.approx(float(EIGS.sum()), rel=0.05)

    probe = tmp_path / "probe.json"
    probe.write_text(json.dumps({"eigenvalues": [10.0], "trace": None, "density": as_dict}))
    loaded = load_density(probe)
    assert loaded["nodes"] == as_dict["nodes"]
    np.testing.assert_array_equal(density_data(loaded)["results"][0]["density"], b["density"])


def test_bad_density_input(result, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="holds no density"):
        density_figure({"eigenvalues": [1.0], "density": None})
    with pytest.raises(DataError, match="not a spectral density"):
        density_figure({"eigenvalues": [1.0]})
    d = result.to_dict()
    with pytest.raises(DataError, match="differ in shape"):
        density_figure({**d, "weights": [[1.0]]})
    with pytest.raises(DataError, match="sigma2"):
        density_figure({**d, "sigma2": 0.0})
    with pytest.raises(ConfigError, match="label"):
        density_figure([result, result], labels=["one"])
    with pytest.raises(ConfigError, match="is a folder"):
        load_density(tmp_path)
    (tmp_path / "x.json").write_text("[1, 2]")
    with pytest.raises(DataError, match="expected a JSON object"):
        load_density(tmp_path / "x.json")
