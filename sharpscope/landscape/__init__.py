"""Loss landscapes around a checkpoint: 1-D and 2-D slices along chosen directions.

Directions (:mod:`~sharpscope.landscape.directions`): top Hessian eigenvectors, filter-normalised
random directions (Li et al. 2018), the line to another checkpoint, or principal directions of a
run's iterates. Slices (:mod:`~sharpscope.landscape.slices`) evaluate the objective's loss and
accuracy on a grid, vmapped over chunks of points, and return a :class:`SliceResult` that saves
as ``.npz`` + ``.json``; a trajectory's iterates can be projected onto a 2-D slice. Figures are in
:mod:`sharpscope.plots.landscape`. :func:`slice_around` (:mod:`~sharpscope.landscape.around`) takes a
model, its data and a :class:`SliceSettings` and does all of it: directions, grid, slice.

Least squares at its minimum, where the slice along the top eigenvector is exactly
``L₀ + λ₁ α²/2`` (float64)::

    >>> import numpy as np, torch
    >>> from sharpscope import Objective
    >>> from sharpscope.landscape import eigen_directions, slice_1d
    >>> X = torch.randn(20, 3, dtype=torch.float64)
    >>> w = torch.tensor([[1.0], [-2.0], [0.5]], dtype=torch.float64)
    >>> y = X @ w + 0.1 * torch.randn(20, 1, dtype=torch.float64)
    >>> model = torch.nn.Linear(3, 1, bias=False).double().requires_grad_(False)
    >>> _ = model.weight.copy_(torch.linalg.lstsq(X, y).solution.T).requires_grad_(True)
    >>> objective = Objective(model, lambda out, t: 0.5 * ((out - t) ** 2).sum(1).mean(), (X, y))
    >>> d = eigen_directions(objective, k=1, tol=1e-10)
    >>> result = slice_1d(objective, d, [-1.0, 0.0, 1.0])
    >>> lam = d.description["eigenvalues"][0]
    >>> bool(np.allclose(result.loss, result.center_loss + lam * np.array([1.0, 0.0, 1.0]) / 2))
    True
"""

from sharpscope.landscape.around import SliceSettings, slice_around
from sharpscope.landscape.directions import (
    Directions,
    as_directions,
    eigen_directions,
    interpolation_direction,
    normalize_direction,
    pca_directions,
    random_directions,
)
from sharpscope.landscape.grid import PointValues, evaluate_points
from sharpscope.landscape.iterates import covering_grid, expand_sources, parameter_vectors, project_path
from sharpscope.landscape.slices import SliceResult, coordinates, slice_1d, slice_2d

__all__ = [
    "Directions", "PointValues", "SliceResult", "as_directions", "coordinates", "covering_grid", "eigen_directions",
    "evaluate_points", "expand_sources", "interpolation_direction", "normalize_direction", "parameter_vectors",
    "pca_directions", "project_path", "random_directions", "SliceSettings", "slice_1d", "slice_2d", "slice_around",
]
