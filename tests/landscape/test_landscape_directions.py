"""Directions: filter normalisation, principal directions of iterates, interpolation between
checkpoints, least-squares paths in non-orthogonal bases, and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sharpscope import Objective
from sharpscope.errors import CheckpointError, ConfigError
from sharpscope.io import save_checkpoint
from sharpscope.landscape import (
    covering_grid,
    interpolation_direction,
    parameter_vectors,
    pca_directions,
    project_path,
    random_directions,
    slice_1d,
    slice_2d,
)
from sharpscope.losses import cross_entropy
from sharpscope.models import ModelSpec

pytestmark = pytest.mark.usefixtures("single_thread")
F64 = torch.float64
SPEC = ModelSpec("cnn", {"in_channels": 2, "num_classes": 3, "channels": [4], "norm": "bn", "image_size": 4})


def cnn_objective(seed: int = 0) -> Objective:
    """Conv (4-D weight + bias), BatchNorm (1-D scale and shift), linear head (2-D weight + bias)."""
    torch.manual_seed(seed)
    model = SPEC.build().double()
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 2, 4, 4, generator=gen, dtype=F64), torch.randint(0, 3, (16,), generator=gen)
    return Objective(model, cross_entropy, (x, y))


def test_filter_normalisation_matches_every_weight_filter_and_skips_bn_and_biases() -> None:
    objective = cnn_objective()
    with torch.no_grad():
        objective.params["blocks.0.0.weight"][2].zero_()  # a dead filter gets a zero direction
    theta = objective.unflatten(objective.parameter_vector())
    d = random_directions(objective, 2, seed=5)
    assert d.description["unperturbed_tensors"] == 4 and d.description["perturbed_tensors"] == 2
    for row in d.vectors:
        parts = objective.unflatten(row)
        for name, part in parts.items():
            if theta[name].ndim >= 2:
                np.testing.assert_allclose(part.flatten(1).norm(dim=1), theta[name].flatten(1).norm(dim=1),
                                           rtol=1e-12)
            else:
                assert torch.count_nonzero(part) == 0, name
        assert torch.count_nonzero(parts["blocks.0.0.weight"][2]) == 0
    assert not torch.allclose(d.vectors[0], d.vectors[1])
    torch.testing.assert_close(random_directions(objective, 2, seed=5).vectors, d.vectors, rtol=0, atol=0)


def test_included_1d_parameters_and_layer_normalisation_match_whole_tensor_norms() -> None:
    objective = cnn_objective()
    theta = objective.unflatten(objective.parameter_vector())
    with_1d = objective.unflatten(random_directions(objective, 1, seed=0, include_bn_and_bias=True).vectors[0])
    layer = objective.unflatten(random_directions(objective, 1, seed=0, normalization="layer").vectors[0])
    for name, t in theta.items():
        if t.ndim < 2:
            assert float(with_1d[name].norm()) == pytest.approx(float(t.norm()), rel=1e-12)
            assert torch.count_nonzero(layer[name]) == 0
        else:
            assert float(layer[name].norm()) == pytest.approx(float(t.norm()), rel=1e-12)
            # the same draw, rescaled per filter in one and per tensor in the other: the ratio varies by filter
            ratio = with_1d[name].flatten(1).norm(dim=1) / layer[name].flatten(1).norm(dim=1)
            assert ratio.std() > 0


def test_pca_of_planar_iterates_recovers_the_plane_and_the_path() -> None:
    objective = cnn_objective()
    center = objective.parameter_vector()
    gen = torch.Generator().manual_seed(1)
    basis = torch.randn(2, objective.dim, generator=gen, dtype=F64)
    basis[1] += 0.8 * basis[0]  # not orthogonal
    coeffs = torch.tensor([[3.0, 2.0], [2.0, 1.5], [1.2, 0.4], [0.5, 0.3], [0.2, -0.1]], dtype=F64)
    iterates = [center + c @ basis for c in coeffs]
    pca = pca_directions(objective, iterates, k=2)
    assert pca.description["explained_total"] == pytest.approx(1.0, abs=1e-12)
    torch.testing.assert_close(pca.vectors @ pca.vectors.T, torch.eye(2, dtype=F64), rtol=0, atol=1e-12)
    coords, residuals = project_path(basis, center, iterates)  # non-orthogonal basis: exact coefficients back
    np.testing.assert_allclose(coords, coeffs.numpy(), atol=1e-10)
    np.testing.assert_allclose(residuals, 0, atol=1e-10)
    result = slice_2d(objective, pca, [-1.0, 1.0], [-1.0, 1.0], path=iterates)
    rebuilt = center + torch.from_numpy(result.path) @ pca.vectors
    torch.testing.assert_close(rebuilt, torch.stack(iterates), rtol=0, atol=1e-10)
    np.testing.assert_allclose(result.path, pca.description["coordinates"], atol=1e-10)
    spanned = torch.cat([basis, torch.randn(1, objective.dim, generator=gen, dtype=F64)]).T
    off = center + 2.0 * torch.linalg.qr(spanned).Q[:, 2]  # orthogonal to the plane
    _, residuals = project_path(basis, center, [off])
    assert residuals[0] == pytest.approx(1.0, abs=1e-10)
    grid = covering_grid(result.path[:, 0], 9)
    assert grid[0] < min(result.path[:, 0].min(), 0) and grid[-1] > result.path[:, 0].max() and len(grid) == 9


def test_checkpoints_interpolation_and_pca_from_a_folder(tmp_path: Path) -> None:
    objective = cnn_objective(0)
    runs = tmp_path / "run"
    models = []
    for step, seed in enumerate([1, 2, 3]):
        torch.manual_seed(seed)
        models.append(SPEC.build().double())
        save_checkpoint(runs / f"step-{step:03d}.safetensors", models[-1], spec=SPEC)
    (runs / "notes.txt").write_text("not a checkpoint")
    vectors = parameter_vectors(objective, [runs])
    for v, m in zip(vectors, models):
        torch.testing.assert_close(v, objective.flatten(p.detach() for p in m.parameters()), rtol=0, atol=0)
    line = interpolation_direction(objective, runs / "step-002.safetensors")
    result = slice_1d(objective, line, [0.0, 0.5, 1.0])
    other = Objective(models[2], cross_entropy, (objective.batches[0].x, objective.batches[0].y))
    # a slice uses the center's buffers; both models hold fresh BatchNorm statistics, so t = 1 is the other model
    assert result.loss[2] == pytest.approx(other.loss(), rel=1e-12)
    assert result.loss[0] == pytest.approx(result.center_loss, rel=1e-14)
    assert line.description["other"].endswith("step-002.safetensors")
    pca = pca_directions(objective, [runs], k=2)
    assert pca.description["num_iterates"] == 3 and len(pca.description["iterates"]) == 3
    assert 0 < pca.description["explained"][1] <= pca.description["explained"][0]


def test_bad_directions_input(tmp_path: Path) -> None:
    objective = cnn_objective()
    with pytest.raises(ConfigError, match="k must be a positive integer"):
        random_directions(objective, 0)
    with pytest.raises(ConfigError, match="normalization"):
        random_directions(objective, 1, normalization="model")
    bn_only = Objective(objective.model, cross_entropy, (objective.batches[0].x, objective.batches[0].y),
                        params="blocks.0.2.*")
    with pytest.raises(ConfigError, match="include_bn_and_bias"):
        random_directions(bn_only, 1)
    center = objective.parameter_vector()
    with pytest.raises(ConfigError, match="at least 2 iterates"):
        pca_directions(objective, [center + 1], k=2)
    with pytest.raises(ConfigError, match="fewer than 2 directions"):
        pca_directions(objective, [center + 1, center + 2, center], k=2)
    with pytest.raises(ConfigError, match="shape"):
        pca_directions(objective, [center[:-1]], k=1)
    with pytest.raises(ConfigError, match="not a single one"):
        pca_directions(objective, center, k=1)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="nothing to interpolate"):
        interpolation_direction(objective, center.clone())
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        interpolation_direction(objective, tmp_path / "missing.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint files"):
        parameter_vectors(objective, [tmp_path / "empty"])
    foreign = ModelSpec("mlp", {"in_features": 4, "num_classes": 2, "widths": [3]})
    save_checkpoint(tmp_path / "foreign.safetensors", foreign.build(), spec=foreign)
    with pytest.raises(CheckpointError, match="does not fit"):
        interpolation_direction(objective, tmp_path / "foreign.safetensors")
    with pytest.raises(ConfigError, match="linearly dependent"):
        project_path(torch.stack([center, 2 * center]), center, [center])
    with pytest.raises(ConfigError, match="at least 2 points"):
        covering_grid(np.array([1.0]), 1)


def test_nonfinite_checkpoint_is_refused(tmp_path: Path) -> None:
    objective = cnn_objective()
    torch.manual_seed(0)
    broken = SPEC.build().double()
    with torch.no_grad():
        broken.head.weight[0, 0] = float("nan")
    save_checkpoint(tmp_path / "nan.pt", broken, spec=SPEC)
    with pytest.raises(CheckpointError, match="NaN"):
        parameter_vectors(objective, [tmp_path / "nan.pt"])


def test_directions_are_independent_of_the_models_dtype() -> None:
    """Drawn in float64 on the CPU from the seed: float32 and float64 models get the same directions."""
    objective = cnn_objective()
    torch.manual_seed(0)
    model32 = SPEC.build()
    model32.load_state_dict({k: v.float() if v.is_floating_point() else v
                             for k, v in objective.model.state_dict().items()})
    obj32 = Objective(model32, cross_entropy, (objective.batches[0].x.float(), objective.batches[0].y))
    d64, d32 = random_directions(objective, 1, seed=9), random_directions(obj32, 1, seed=9)
    assert d32.vectors.dtype == torch.float32
    torch.testing.assert_close(d32.vectors.double(), d64.vectors, rtol=1e-6, atol=1e-7)


def test_bare_modules_without_spec_work_too() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    x, y = torch.randn(10, 3, dtype=F64), torch.randint(0, 2, (10,))
    objective = Objective(model, cross_entropy, (x, y))
    d = random_directions(objective, 2, seed=0)
    assert d.vectors.shape == (2, objective.dim)
    assert slice_2d(objective, d, [0.0, 1.0], [0.0, 1.0]).loss.shape == (2, 2)
