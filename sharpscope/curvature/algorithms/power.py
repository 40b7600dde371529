"""Power iteration for the eigenvalue of largest magnitude (kept for comparison with Lanczos)."""

from __future__ import annotations

import warnings
from typing import Literal

import torch
from torch import Tensor

from sharpscope.curvature.algorithms.lanczos import _start_vector
from sharpscope.curvature.algorithms.ritz import ConvergenceWarning
from sharpscope.curvature.algorithms.vectors import inner, vector_norm
from sharpscope.curvature.operators.linear_operator import LinearOperator, check_operator
from sharpscope.curvature.results import EigenResult
from sharpscope.curvature.sampling import Stopwatch, make_generator, seed_record
from sharpscope.errors import ConfigError
from sharpscope.validation import check_choice


def power_iteration(op: LinearOperator, *, tol: float = 1e-3, max_iter: int = 100,
                    criterion: Literal["residual", "change"] = "residual", v0: Tensor | None = None,
                    seed: int | torch.Generator | None = None) -> EigenResult:
    """Iterate ``v ← H v / ‖H v‖``; the Rayleigh quotient ``θ = vᵀ H v`` estimates the eigenvalue.

    Stops when the relative residual ``‖H v − θ v‖ / |θ|`` (``criterion="residual"``, the same rule
    as :func:`lanczos`) or the relative change of ``θ`` between steps (``"change"``, PyHessian's
    rule) drops below ``tol``. Converges at rate ``|λ₂/λ₁|`` per product, so it needs several times
    more products than Lanczos for the same accuracy.
    """
    check_operator(op)
    check_choice("criterion", criterion, ("residual", "change"))
    if max_iter < 1 or not tol > 0:
        raise ConfigError(f"need max_iter >= 1 and tol > 0, got {max_iter} and {tol}")
    clock, start_hvps = Stopwatch(op.device), op.matvecs
    gen = make_generator(seed)
    v = _start_vector(op, v0, gen)
    theta_old, residual, done = None, float("inf"), False
    for step in range(1, max_iter + 1):  # noqa: B007 (the last step is reported after the loop)
        hv = op.matvec(v)
        theta = float(inner(op, v, hv))
        residual = float(vector_norm(op, hv - theta * v)) / max(abs(theta), 1e-300)
        change = abs(theta - theta_old) / max(abs(theta), 1e-300) if theta_old is not None else float("inf")
        done = (residual if criterion == "residual" else change) < tol
        norm = vector_norm(op, hv)
        if done or norm == 0:
            break
        v, theta_old = hv / norm, theta
    if not done:
        warnings.warn(f"power iteration stopped after {max_iter} products without reaching tol={tol:g} "
                      f"({criterion})", ConvergenceWarning, stacklevel=2)
    return EigenResult(
        eigenvalues=torch.tensor([theta], dtype=torch.float64), eigenvectors=v[:, None],
        residuals=torch.tensor([residual], dtype=torch.float64), hvps=op.matvecs - start_hvps,
        seconds=clock.seconds(), converged=done,
        settings={"method": "power_iteration", "tol": tol, "criterion": criterion, "max_iter": max_iter,
                  "steps": step, "seed": seed_record(seed, gen)},
    )
