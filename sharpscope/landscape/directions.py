"""Directions for loss-landscape slices, as flat vectors in the objective's parameter layout.

A slice evaluates ``L(θ + Σ_i c_i d_i)`` around the objective's current parameters ``θ`` for the
directions ``d_i``: the rows of :attr:`Directions.vectors`, shape ``(k, dim)``, laid out like
:meth:`~sharpscope.curvature.Objective.flatten` and the vectors of
:class:`~sharpscope.curvature.HessianOperator`. Four ways to choose them:

* :func:`eigen_directions` — the top Hessian eigenvectors (Lanczos), unit length, so the slice
  along ``d_1`` at a minimum is ``L₀ + λ₁ t²/2`` to second order.
* :func:`random_directions` — Gaussian directions, filter-normalised (Li et al. 2018): every
  filter ``d[f]`` (a slice along a weight's first dimension: one output channel of a convolution,
  one row of a linear layer) is rescaled to the norm of the weight's filter, ``‖d[f]‖ = ‖θ[f]‖``,
  so the scale of the slice follows the scale of each filter and is invariant to the rescalings
  that BatchNorm makes harmless. Parameters with fewer than two dimensions (biases, normalisation
  scales and shifts) stay unperturbed by default; when included, each is rescaled as a whole,
  ``‖d‖ = ‖θ‖``.
* :func:`interpolation_direction` — ``θ_B − θ`` towards another checkpoint: ``t = 0`` is the
  objective's parameters, ``t = 1`` the other checkpoint's.
* :func:`pca_directions` — principal directions of a run's iterates (Li et al. 2018): the top right
  singular vectors of ``M = [θ_1 − θ; …; θ_n − θ]`` (not centred: the plane through ``θ`` that holds
  the iterates best in least squares).

Buffers (BatchNorm running statistics) are never perturbed: every slice uses the objective
model's own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

import torch
from torch import Tensor

from sharpscope.curvature import HessianOperator, Objective, lanczos
from sharpscope.curvature.operators.hessian import HVPMode
from sharpscope.curvature.operators.precision import ProductPrecision
from sharpscope.curvature.sampling import make_generator, seed_record
from sharpscope.errors import ConfigError
from sharpscope.landscape.iterates import Source, expand_sources, parameter_vectors, source_names
from sharpscope.validation import check_choice, check_int

Normalization = Literal["filter", "layer"]


@dataclass(frozen=True)
class Directions:
    """``k`` directions as the rows of ``vectors`` ``(k, dim)``, and how they were chosen.

    ``description`` is JSON-ready: ``kind`` (``eig``, ``random``, ``interp``, ``pca`` or
    ``custom``), ``labels`` (one axis label per direction), ``norms`` and what the kind records
    (eigenvalues and residuals, seed and normalisation, explained variance, ...).
    """

    vectors: Tensor
    description: dict[str, object] = field(default_factory=dict)

    @property
    def k(self) -> int:
        """The number of directions (rows of ``vectors``)."""
        return int(self.vectors.shape[0])


def as_directions(directions: Directions | Tensor, objective: Objective) -> Directions:
    """Check ``directions`` against the objective (shape, finiteness); wrap a bare ``(k, dim)`` or
    ``(dim,)`` tensor as ``custom`` directions; move the vectors to the objective's device and dtype."""
    if isinstance(directions, Tensor):
        vectors = directions[None] if directions.ndim == 1 else directions
        directions = Directions(vectors, {"kind": "custom", "labels": [f"d{i + 1}" for i in range(vectors.shape[0])],
                                          "norms": [float(v) for v in vectors.double().norm(dim=-1)]})
    if not isinstance(directions, Directions):
        raise ConfigError(f"directions must be a Directions or a tensor, got {type(directions).__name__}")
    v = directions.vectors
    if v.ndim != 2 or v.shape[1] != objective.dim or v.shape[0] < 1:
        raise ConfigError(f"directions must have shape (k, {objective.dim}) for the objective's {objective.dim} "
                          f"parameters, got {tuple(v.shape)}")
    if not torch.isfinite(v).all():
        raise ConfigError("directions contain NaN or infinite entries")
    if (v.double().norm(dim=1) == 0).any():
        raise ConfigError("a direction is the zero vector")
    return Directions(v.to(device=objective.device, dtype=objective.dtype), directions.description)


# ----------------------------------------------------------------------------------- random
def normalize_direction(d: Tensor, theta: Tensor, normalization: Normalization) -> Tensor:
    """Rescale a random direction of one parameter tensor to the parameter's scale.

    ``filter``: ``d[f] ← d[f] · ‖θ[f]‖ / ‖d[f]‖`` for every slice ``f`` along the first dimension
    of a tensor with two or more dimensions; a tensor with fewer dimensions is one filter.
    ``layer``: ``d ← d · ‖θ‖ / ‖d‖`` for the whole tensor.
    """
    if normalization == "filter" and d.ndim >= 2:
        d_norm = d.flatten(1).norm(dim=1)
        theta_norm = theta.flatten(1).norm(dim=1)
        scale = theta_norm / d_norm.clamp_min(torch.finfo(d.dtype).tiny)
        return d * scale.reshape(-1, *([1] * (d.ndim - 1)))
    if normalization in ("filter", "layer"):
        return d * (theta.norm() / d.norm().clamp_min(torch.finfo(d.dtype).tiny))
    raise ConfigError(f"normalization must be 'filter' or 'layer', got {normalization!r}")


def random_directions(objective: Objective, k: int = 2, *, seed: int | torch.Generator | None = 0,
                      normalization: Normalization = "filter", include_bn_and_bias: bool = False) -> Directions:
    """``k`` Gaussian directions, each normalised per filter (or per layer) to the parameters' scale.

    Entries are drawn in float64 on the CPU from ``seed`` (so a seed gives the same directions on
    any device) and normalised in float64 against the objective's current parameters.
    ``include_bn_and_bias=False`` (Li et al.'s default) leaves every parameter with fewer than two
    dimensions at zero in the directions.
    """
    check_int("k", k, low=1)
    check_choice("normalization", normalization, get_args(Normalization))
    gen = make_generator(seed)
    theta = objective.unflatten(objective.parameter_vector().double().cpu())
    perturbed = [n for n in objective.names if include_bn_and_bias or theta[n].ndim >= 2]
    rows = []
    for _ in range(k):
        raw = objective.unflatten(torch.randn(objective.dim, generator=gen, dtype=torch.float64))
        rows.append(objective.flatten(normalize_direction(raw[n], theta[n], normalization) if n in perturbed
                                      else torch.zeros_like(raw[n]) for n in objective.names))
    vectors = torch.stack(rows)
    if not (vectors.norm(dim=1) > 0).all():
        raise ConfigError("the random directions are zero: every perturbed parameter is zero, or the selection "
                          "holds only biases and normalisation parameters (pass include_bn_and_bias=True)")
    description = {"kind": "random", "labels": [f"random direction {i + 1}" for i in range(k)],
                   "normalization": normalization, "include_bn_and_bias": include_bn_and_bias,
                   "distribution": "gaussian", "seed": seed_record(seed, gen),
                   "perturbed_tensors": len(perturbed), "unperturbed_tensors": len(objective.names) - len(perturbed),
                   **_geometry(vectors)}
    return Directions(vectors.to(device=objective.device, dtype=objective.dtype), description)


def _geometry(vectors: Tensor) -> dict[str, object]:
    """Norms of the rows and their pairwise cosines (``cosines[i][j]``), for the record."""
    v = vectors.double()
    norms = v.norm(dim=1)
    cos = (v @ v.T) / (norms[:, None] * norms[None, :])
    return {"norms": [float(x) for x in norms], "cosines": cos.cpu().tolist()}


# ------------------------------------------------------------------------------------ eigen
def eigen_directions(objective: Objective, k: int = 2, *, tol: float = 1e-3, max_iter: int | None = None,
                     seed: int = 0, hvp_mode: HVPMode = "auto",
                     precision: ProductPrecision = "strict") -> Directions:
    """The unit eigenvectors of the ``k`` largest Hessian eigenvalues (Lanczos on a
    :class:`~sharpscope.curvature.HessianOperator` of the objective).

    Each eigenvector's sign is fixed so that its largest-magnitude entry is positive. The
    description records the eigenvalues, Ritz residuals, convergence, HVPs, seconds, the
    operator's settings and the slopes ``d_i · ∇L(θ)``, so that ``L₀ + s_i t + λ_i t²/2`` is the
    quadratic model of the slice along ``d_i``.
    """
    op = HessianOperator(objective, mode=hvp_mode, precision=precision)
    result = lanczos(op, k=k, which="LA", tol=tol, max_iter=max_iter, seed=seed)
    assert result.eigenvectors is not None
    vectors = result.eigenvectors.T.contiguous()
    peaks = vectors.gather(1, vectors.abs().argmax(dim=1, keepdim=True))
    vectors = vectors * torch.where(peaks < 0, -1.0, 1.0).to(vectors.dtype)
    eig = result.to_dict()
    slopes = vectors.double() @ objective.gradient().double()
    description = {"kind": "eig", "labels": [f"eigenvector {i + 1} (λ = {lam:.4g})"
                                             for i, lam in enumerate(eig["eigenvalues"])],
                   **eig, "slopes": [float(s) for s in slopes], "operator": op.describe(), **_geometry(vectors)}
    return Directions(vectors, description)


# ---------------------------------------------------------------------- checkpoints and runs
def interpolation_direction(objective: Objective, other: Source, *, unsafe_load: bool = False) -> Directions:
    """``θ_B − θ``: the line from the objective's parameters (``t = 0``) to ``other`` (``t = 1``),
    a checkpoint path or a flat parameter vector."""
    target = parameter_vectors(objective, [other], unsafe_load=unsafe_load)[0]
    d = target - objective.parameter_vector()
    distance = float(d.double().norm())
    if distance == 0:
        raise ConfigError(f"{source_names([other])[0]} has the same parameters as the objective: nothing to "
                          "interpolate")
    description = {"kind": "interp", "labels": ["interpolation t (0: center, 1: other)"],
                   "other": source_names([other])[0], "distance": distance, **_geometry(d[None])}
    return Directions(d[None], description)


def pca_directions(objective: Objective, iterates: Sequence[Source], k: int = 2, *,
                   unsafe_load: bool = False) -> Directions:
    """The top-``k`` principal directions of ``θ_i − θ`` over a run's iterates (Li et al. 2018).

    With ``M`` the ``(n, dim)`` matrix of differences, the directions are its top right singular
    vectors ``v_j = Mᵀ u_j / s_j`` (unit length), from the eigendecomposition of the ``n × n``
    Gram matrix ``M Mᵀ = U S² Uᵀ`` in float64. ``explained[j] = s_j² / Σ s²`` is the share of
    ``Σ_i ‖θ_i − θ‖²`` in the plane, and ``coordinates[i] = M_i V`` are the iterates' coordinates in it
    (their projected path). ``iterates`` are checkpoint paths (a folder stands for its
    checkpoint files, sorted by name) or flat parameter vectors; pass the final one's parameters
    as the objective's.
    """
    check_int("k", k, low=1)
    vectors = parameter_vectors(objective, iterates, unsafe_load=unsafe_load)
    if len(vectors) < k:
        raise ConfigError(f"{k} principal directions need at least {k} iterates, got {len(vectors)}")
    diffs = (torch.stack(vectors) - objective.parameter_vector()).double()
    gram = diffs @ diffs.T
    evals, evecs = torch.linalg.eigh(gram)
    evals, evecs = evals.flip(0).clamp_min(0), evecs.flip(1)
    total = float(evals.sum())
    if total == 0 or float(evals[k - 1]) <= len(vectors) * torch.finfo(objective.dtype).eps * float(evals[0]):
        raise ConfigError(f"the iterates' differences from the center span fewer than {k} directions "
                          f"(squared singular values {[float(e) for e in evals[:k]]})")
    singular = evals[:k].sqrt()
    directions = (diffs.T @ evecs[:, :k] / singular).T
    explained = [float(e) / total for e in evals[:k]]
    description = {"kind": "pca", "labels": [f"PC {j + 1} ({100 * explained[j]:.1f}%)" for j in range(k)],
                   "num_iterates": len(vectors), "singular_values": [float(s) for s in singular],
                   "coordinates": (diffs @ directions.T).cpu().tolist(),
                   "explained": explained, "explained_total": math.fsum(explained),
                   "iterates": source_names(expand_sources(iterates)), **_geometry(directions)}
    return Directions(directions.to(objective.dtype).contiguous(), description)

