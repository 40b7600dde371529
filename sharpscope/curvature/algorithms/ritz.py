"""Ritz values from a Krylov basis: the tridiagonal's eigenpairs, which of them are wanted, their
error bounds and the stopping test, shared by single-vector, block and restarted Lanczos.

For an eigenpair ``T s = θ s`` of the projected matrix ``T = Qᵀ H Q`` the Ritz vector ``y = Q s``
has a residual ``‖H y − θ y‖`` that the recurrence gives without another product; the error of
``θ`` is bounded by that residual, and by its square over the gap to the rest of the spectrum.
"""

from __future__ import annotations

import math
import warnings
from typing import Literal, NamedTuple, Protocol

import numpy as np
import torch

from sharpscope.curvature.operators.linear_operator import LinearOperator
from sharpscope.curvature.results import EigenResult

Which = Literal["LA", "SA", "LM", "BE"]
Stop = Literal["residual", "eigenvalue"]
#: The relative measure a guard Ritz pair must reach (or ``tol`` when that is looser).
GUARD_TOL = 1e-2
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
    measure, whether every wanted and guard pair passed, and the guards' measures."""

    idx: np.ndarray
    residuals: np.ndarray
    bounds: np.ndarray
    measure: np.ndarray
    done: bool
    guard_measure: np.ndarray


def check_ritz(theta: np.ndarray, abs_residuals: np.ndarray, *, k: int, which: Which, scale: float, eps: float,
               size: int, stop: Stop, tol: float, ready: bool, guards: int = 0) -> RitzCheck:
    """The stopping test of (block) Lanczos after ``size`` basis vectors: the relative residual
    ``r/|θ|`` or the relative error bound ``min(r, r²/δ)/|θ|`` (``|θ|`` floored at ``√eps·scale``)
    of every wanted Ritz pair below ``tol``; the eigenvalue rule only once ``ready``.

    ``guards`` more Ritz pairs beyond the ``k`` wanted ones (the next ones in the order of ``which``)
    must pass the same measure below ``max(tol, GUARD_TOL)`` before the run stops. A residual test
    cannot see an eigenvalue the Krylov space has not found yet: a start vector nearly orthogonal to
    the extreme eigenvector lets its neighbour converge first and pass for the extreme one.
    Locating the guards too takes the extra steps in which the space grows towards the missed
    eigenvector, which then appears as a new extreme Ritz value (measured: ``docs/large-models.md``). A
    guard needs locating, not accuracy, hence the looser bound: a guard inside the bulk of the
    spectrum would otherwise need many products to meet a tight ``tol``.
    """
    idx = wanted_indices(theta, k, which)
    chosen = set(idx.tolist())
    guard = np.array([i for i in wanted_indices(theta, k + guards, which) if i not in chosen], dtype=np.int64)
    both = np.concatenate([idx, guard])
    denominators = np.maximum(np.abs(theta[both]), math.sqrt(eps) * scale)
    residuals = abs_residuals[both] / denominators
    bounds = ritz_error_bounds(theta, abs_residuals, both, rounding=size * eps * scale)
    measure = residuals if stop == "residual" else bounds / denominators
    limits = np.concatenate([np.full(len(idx), tol), np.full(len(guard), max(tol, GUARD_TOL))])
    done = (len(both) == k + guards and bool((measure < limits).all()) and (stop == "residual" or ready))
    n = len(idx)
    return RitzCheck(idx, residuals[:n], bounds[:n], measure[:n], done, measure[n:])


class RitzBasis(Protocol):
    """What :func:`ritz_result` needs of a basis: the vectors' memory and ``Q s``."""

    @property
    def allocated(self) -> int:
        """Vectors' worth of memory the basis holds."""
        ...

    def combine(self, s: torch.Tensor) -> torch.Tensor:
        """``Q s``: the basis vectors combined with the coefficients ``s`` (a vector or the columns of a matrix)."""
        ...


def ritz_result(op: LinearOperator, basis: RitzBasis, S: np.ndarray, theta: np.ndarray, check: RitzCheck, *,
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
        worst = max(float(measure.max()), float(check.guard_measure.max(initial=0.0)))
        warnings.warn(f"{stopped} with relative {stop} measure {worst:.2e} above tol={tol:g}"
                      + (" (wanted and guard Ritz pairs)" if len(check.guard_measure) else "")
                      + "; raise max_iter or tol", ConvergenceWarning, stacklevel=stacklevel)
    vectors = None
    if return_eigenvectors:
        vectors = basis.combine(torch.as_tensor(S[:, check.idx], dtype=op.dtype)).to(op.device)
    return EigenResult(
        eigenvalues=torch.as_tensor(theta[check.idx], dtype=torch.float64), eigenvectors=vectors,
        residuals=torch.as_tensor(residuals, dtype=torch.float64), hvps=hvps, seconds=seconds, converged=done,
        settings={**settings, "memory": {**memory, "basis_vectors_allocated": basis.allocated}, "guard_measure":
                  [float(x) for x in check.guard_measure] if len(check.guard_measure) else None,
                  "product_precision": op.precision_record()},
        error_bounds=torch.as_tensor(bounds, dtype=torch.float64),
    )
