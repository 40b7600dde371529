"""``slice_around`` against the exact quadratic of least squares and against the same slice assembled
from the direction and slice functions (the landscape command's steps before they moved into the
library); ``SliceSettings`` refuses bad values before any work and names the argument."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sharpscope import Objective
from sharpscope.errors import ConfigError
from sharpscope.io import save_checkpoint
from sharpscope.landscape import (
    SliceSettings,
    covering_grid,
    eigen_directions,
    interpolation_direction,
    pca_directions,
    random_directions,
    slice_1d,
    slice_2d,
    slice_around,
)
from sharpscope.losses import cross_entropy
from sharpscope.models import ModelSpec

pytestmark = pytest.mark.usefixtures("single_thread")
F64 = torch.float64
SPEC = ModelSpec("mlp", {"in_features": 5, "num_classes": 3, "widths": [6], "activation": "tanh"})


def least_squares_at_minimum() -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``½ mean (w·x − y)²`` (the ``mse`` loss, one output) at its minimizer; its Hessian is ``XᵀX/N``."""
    gen = torch.Generator().manual_seed(3)
    X = torch.randn(24, 4, generator=gen, dtype=F64)
    y = X @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]], dtype=F64) + 0.3 * torch.randn(24, 1, generator=gen, dtype=F64)
    model = nn.Linear(4, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.linalg.lstsq(X, y).solution.T)
    return model, X, y, X.T @ X / 24


def test_eigen_slice_is_the_exact_quadratic() -> None:
    model, X, y, H = least_squares_at_minimum()
    lam = torch.linalg.eigvalsh(H).flip(0)[:2].tolist()
    settings = SliceSettings(directions="eig", loss="mse", tol=1e-10, alphas=(-1.0, 2.0, 4), betas=(-0.5, 0.5, 3),
                             batch_size=10)
    result = slice_around(model, X, y, settings)
    a, b = np.meshgrid(np.linspace(-1.0, 2.0, 4), np.linspace(-0.5, 0.5, 3), indexing="ij")
    np.testing.assert_allclose(result.loss, result.center_loss + (lam[0] * a**2 + lam[1] * b**2) / 2, rtol=0,
                               atol=1e-10)
    assert result.settings["slice"]["dims"] == 2 and result.settings["slice"]["dims_default"]
    assert result.settings["slice"]["axes"] == ["given", "given"] and result.settings["loss_fn"] == "mse"


def data(n: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, 5, generator=gen)
    return x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long()


def fresh_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return SPEC.build().double()


@pytest.fixture(scope="module")
def iterates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("around")
    for i in range(3):
        save_checkpoint(folder / "run" / f"step-{i}.safetensors", fresh_model(10 + i), spec=SPEC)
    return folder


def by_hand(kind: str, folder: Path) -> tuple[object, object]:
    """The slice assembled from the library's steps, with the command's default axes and dimension."""
    x, y = data()
    objective = Objective(fresh_model(0), cross_entropy, (x, y), batch_size=7)
    options = dict(method="loop", chunk_size=5)
    if kind == "random":
        d = random_directions(objective, 2, seed=4, normalization="layer", include_bn_and_bias=True)
        grid = np.linspace(-1.0, 1.0, 21)
        return slice_2d(objective, d, grid, grid, **options), d
    if kind == "eig":
        d = eigen_directions(objective, 1, tol=1e-9, seed=4)
        return slice_1d(objective, d, np.linspace(-1.0, 1.0, 21), **options), d
    if kind == "interp":
        d = interpolation_direction(objective, folder / "run" / "step-1.safetensors")
        return slice_1d(objective, d, np.linspace(-0.5, 1.5, 21), **options), d
    d = pca_directions(objective, [folder / "run"], 2)
    coords = np.asarray(d.description["coordinates"])
    axes = [covering_grid(coords[:, j], 21) for j in range(2)]
    return slice_2d(objective, d, *axes, path=[folder / "run"], **options), d


@pytest.mark.parametrize("kind, options", [
    ("random", dict(seed=4, normalization="layer", include_bn_bias=True)),
    ("eig", dict(seed=4, tol=1e-9, dims=1)),
    ("interp", {}),
    ("pca", {}),
])
def test_equals_the_slice_assembled_step_by_step(iterates: Path, kind: str, options: dict) -> None:
    x, y = data()
    settings = SliceSettings(directions=kind, batch_size=7, method="loop", chunk_size=5, dtype="float64", **options)
    sources = {"interp": dict(other=iterates / "run" / "step-1.safetensors"), "pca": dict(iterates=[iterates / "run"])}
    model = fresh_model(0).float()
    result = slice_around(model, x, y, settings, **sources.get(kind, {}))
    assert next(model.parameters()).dtype == F64  # cast in place to the settings' dtype
    expected, directions = by_hand(kind, iterates)
    for name in ("alphas", "betas", "loss", "accuracy", "path", "path_residuals"):
        got, want = getattr(result, name), getattr(expected, name)
        assert (got is None) == (want is None), name
        if want is not None:
            np.testing.assert_array_equal(got, want, err_msg=name)
    untimed = ({k: v for k, v in d.items() if k != "seconds"} for d in (result.directions, directions.description))
    assert result.center_loss == expected.center_loss and next(untimed) == next(untimed)
    assert result.settings["slice"]["dims_default"] is (kind != "eig")
    assert result.settings["slice"]["axes"][0].startswith("default")


@pytest.mark.parametrize("options, argument", [
    (dict(dims=3), "dims"),
    (dict(directions="interp", dims=2), "dims"),
    (dict(directions="hessian"), "directions"),
    (dict(alphas=(1.0, -1.0, 5)), "alphas"),
    (dict(alphas=(0.0, 1.0, 1)), "alphas"),
    (dict(betas=(0.0, float("inf"), 3)), "betas"),
    (dict(dims=1, betas=(0.0, 1.0, 3)), "betas"),
    (dict(normalization="model"), "normalization"),
    (dict(loss="l1"), "loss"),
    (dict(bn="train"), "bn"),
    (dict(method="fast"), "method"),
    (dict(dtype="float16"), "dtype"),
    (dict(device=0), "device"),
])
def test_bad_settings_name_their_argument(options: dict, argument: str) -> None:
    with pytest.raises(ConfigError, match=argument) as caught:
        SliceSettings(**options)
    assert caught.value.argument == argument and len(str(caught.value).splitlines()) == 1


@pytest.mark.parametrize("options", [dict(seed=-1), dict(tol=1.0), dict(chunk_size=0), dict(max_iter=0),
                                     dict(batch_size=0), dict(include_bn_bias=1), dict(precision="fp16"), dict(precision="bf16", dtype="float64")])
def test_numbers_and_flags_are_checked(options: dict) -> None:
    name = next(iter(options))
    with pytest.raises(ConfigError, match=name):
        SliceSettings(**options)


def test_a_grid_too_large_for_memory_is_refused_before_any_work() -> None:
    with pytest.raises(ConfigError, match="points needs about"):
        SliceSettings(alphas=(0.0, 1.0, 10**6), betas=(0.0, 1.0, 10**6))


@pytest.mark.parametrize("kind, sources, argument", [
    ("interp", {}, "other"),
    ("random", dict(other="b.safetensors"), "other"),
    ("pca", {}, "iterates"),
    ("eig", dict(iterates=["run"]), "iterates"),
])
def test_missing_or_unused_checkpoints_are_refused_before_the_model_is_touched(kind: str, sources: dict,
                                                                               argument: str) -> None:
    x, y = data()
    model = fresh_model(0).float()
    settings = SliceSettings(directions=kind, dims=1 if kind in ("interp", "eig") else None, dtype="float64")
    with pytest.raises(ConfigError) as caught:
        slice_around(model, x, y, settings, **sources)
    assert caught.value.argument == argument and argument in str(caught.value)
    assert next(model.parameters()).dtype == torch.float32
