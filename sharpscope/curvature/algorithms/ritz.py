"""Ritz values from a Krylov basis: the tridiagonal's eigenpairs, which of them are wanted, their
error bounds and the stopping test, shared by single-vector, block and restarted Lanczos.

For an eigenpair ``T s = θ s`` of the projected matrix ``T = Qᵀ H Q`` the Ritz vector ``y = Q s``
has a residual ``‖H y − θ y‖`` that the recurrence gives without another product; the error of
``θ`` is bounded by that residual, and by its square over the gap to the rest of the spectrum.
"""

from __future__ import annotations

import math
import warnings
from typing import Literal, NamedTuple

import numpy as np
import torch

from sharpscope.curvature.algorithms.krylov_basis import KrylovBasis
from sharpscope.curvature.operators.linear_operator import LinearOperator
from sharpscope.curvature.results import EigenResult

Which = Literal["LA", "SA", "LM", "BE"]
Stop = Literal["residual", "eigenvalue"]
DEFAULT_STOP: Stop = "residual"  # see lanczos(): the eigenvalue rule can stop inside a near-degenerate pair


class ConvergenceWarning(UserWarning):
    """An iterative method stopped at its iteration limit before reaching its tolerance."""


def tridiagonal_eigh(alphas: np.ndarray, betas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (ascending) and eigenvectors of the symmetric tridiagonal ``T`` in float64."""
    from scipy.linalg import eigh_tridiagonal  # scipy.linalg takes ~0.5 s to import: not at start-up
    if len(alphas) == 1:
        return np.asarray(alphas, dtype=np.float64), np.ones((1, 1))
    return eigh_tridiagonal(np.asarray(alphas, np.float64), np.asarray(betas, np.float64))


def wanted_indices(theta: np.ndarray, k: int, which: Which) -> np.ndarray:
    """Indices of the ``k`` wanted Ritz values, in the order results are reported.

    ``LA``: largest algebraic, descending. ``SA``: smallest algebraic, ascending (most negative
    first). ``LM``: largest magnitude, by decreasing magnitude. ``BE``: both ends, ``⌈k/2⌉`` from
    the top and ``⌊k/2⌋`` from the bottom, descending.
    """
    k = min(k, len(theta))
    order = np.argsort(theta)
    if which == "LA":
        return order[::-1][:k]
    if which == "SA":
        return order[:k]
    if which == "LM":
        return np.argsort(-np.abs(theta), kind="stable")[:k]
    top, bottom = order[::-1][: (k + 1) // 2], order[: k // 2]
    picked = list(dict.fromkeys([*top.tolist(), *bottom.tolist()]))
    return np.array(sorted(picked, key=lambda i: -theta[i]), dtype=np.int64)


def ritz_error_bounds(theta: np.ndarray, abs_residuals: np.ndarray, idx: np.ndarray,
                      rounding: float = 0.0) -> np.ndarray:
    """Estimated bounds on ``|λ_i − θ_i|`` for the wanted Ritz values ``theta[idx]``.

    A Ritz value is within its residual ``r_i = ‖H y_i − θ_i y_i‖`` of an eigenvalue, and, when no
    other eigenvalue lies within ``δ_i`` of it, within ``r_i² / δ_i`` (Kato–Temple; Saad, *Numerical
    Methods for Large Eigenvalue Problems*, §3.2). The gap is estimated from the other Ritz values,
    each moved towards ``θ_i`` by its own residual: ``δ_i = min_{j≠i} (|θ_i − θ_j| − r_j)``. The
    bound is ``min(r_i, r_i² / δ_i)``, or ``r_i`` when that gap is not positive, and never below
    ``rounding`` (the floating-point error of the computed ``θ_i`` itself).
    """
    bounds = abs_residuals[idx].astype(np.float64).copy()
    if len(theta) > 1:
        for n, i in enumerate(idx):
            others = np.arange(len(theta)) != i
            gap = float(np.min(np.abs(theta[i] - theta[others]) - abs_residuals[others]))
            if gap > 0:
                bounds[n] = min(bounds[n], abs_residuals[i] ** 2 / gap)
    return np.maximum(bounds, rounding)


class RitzCheck(NamedTuple):
    """The wanted Ritz pairs' indices, relative residuals, absolute error bounds, the stopping
    measure and whether it is below ``tol``."""

    idx: np.ndarray
    residuals: np.ndarray
    bounds: np.ndarray
    measure: np.ndarray
    done: bool


def check_ritz(theta: np.ndarray, abs_residuals: np.ndarray, *, k: int, which: Which, scale: float, eps: float,
               size: int, stop: Stop, tol: float, ready: bool) -> RitzCheck:
    """The stopping test of (block) Lanczos after ``size`` basis vectors: the relative residual
    ``r/|θ|`` or the relative error bound ``min(r, r²/δ)/|θ|`` (``|θ|`` floored at ``√eps·scale``)
    of every wanted Ritz pair below ``tol``; the eigenvalue rule only once ``ready``."""
    idx = wanted_indices(theta, k, which)
    denominators = np.maximum(np.abs(theta[idx]), math.sqrt(eps) * scale)
    residuals = abs_residuals[idx] / denominators
    bounds = ritz_error_bounds(theta, abs_residuals, idx, rounding=size * eps * scale)
    measure = residuals if stop == "residual" else bounds / denominators
    done = len(idx) == k and bool((measure < tol).all()) and (stop == "residual" or ready)
    return RitzCheck(idx, residuals, bounds, measure, done)


def ritz_result(op: LinearOperator, basis: KrylovBasis, S: np.ndarray, theta: np.ndarray, check: RitzCheck, *,
                spanned: bool, rounding: float, stopped: str, tol: float, stop: Stop, return_eigenvectors: bool,
                hvps: int, seconds: float, settings: dict[str, object], memory: dict[str, object],
                stacklevel: int = 3) -> EigenResult:
    """The :class:`EigenResult` of a (block) Lanczos run (a warning points ``stacklevel`` frames up). When the basis ``spanned`` the whole space,
    every Ritz pair is exact up to ``rounding``; otherwise a run that did not meet ``tol`` warns
    with :class:`ConvergenceWarning` (``stopped``: "Lanczos stopped after 12 steps")."""
    residuals, bounds, measure, done = check.residuals, check.bounds, check.measure, check.done
    if spanned:
        residuals, measure = np.zeros_like(residuals), np.zeros_like(measure)
        bounds, done = np.full_like(bounds, rounding), True
    if not done:
        warnings.warn(f"{stopped} with relative {stop} measure {measure.max():.2e} above tol={tol:g}; "
                      "raise max_iter or tol", ConvergenceWarning, stacklevel=stacklevel)
    vectors = None
    if return_eigenvectors:
        vectors = basis.combine(torch.as_tensor(S[:, check.idx], dtype=op.dtype, device=op.device))
    return EigenResult(
        eigenvalues=torch.as_tensor(theta[check.idx], dtype=torch.float64), eigenvectors=vectors,
        residuals=torch.as_tensor(residuals, dtype=torch.float64), hvps=hvps, seconds=seconds, converged=done,
        settings={**settings, "memory": {**memory, "basis_vectors_allocated": basis.allocated},
                  "product_precision": op.precision_record()},
        error_bounds=torch.as_tensor(bounds, dtype=torch.float64),
    )
