"""Spectral density by stochastic Lanczos quadrature (Golub–Welsch; Ghorbani, Krishnan & Xiao 2019).

For a unit start vector ``v`` and ``m`` Lanczos steps, ``T_m = U diag(θ) Uᵀ`` gives a Gauss
quadrature of the spectral measure seen from ``v``: nodes ``θ_j`` and weights ``τ_j = U_{1j}²``
(summing to 1), so ``vᵀ f(H) v ≈ Σ_j τ_j f(θ_j)``. Averaging over random starts estimates the
eigenvalue density ``(1/d) Σ_i δ(t − λ_i)``, smoothed here with a Gaussian kernel of variance
``σ² = sigma2 · max(1, λ̂_max − λ̂_min)``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from sharpscope.curvature.lanczos import lanczos_tridiagonals, tridiagonal_eigh
from sharpscope.curvature.linear_operator import LinearOperator
from sharpscope.curvature.results import DensityResult, gaussian_density
from sharpscope.curvature.sampling import Stopwatch, make_generator, seed_record
from sharpscope.validation import check_int, check_real


def slq_density(op: LinearOperator, num_steps: int = 90, num_runs: int = 10, *, sigma2: float = 1e-5,
                grid_size: int = 1000, run_block: int | None = None,
                seed: int | torch.Generator | None = None) -> DensityResult:
    """Smoothed spectral density from ``num_runs`` Lanczos runs of ``num_steps`` steps each.

    Runs advance together, ``run_block`` at a time (default all), sharing each operator call;
    memory is ``num_steps · run_block`` vectors. The grid spans the extreme nodes ± 1% of their
    range (at least ± 0.01). The result keeps the raw tridiagonals so the density can be
    re-smoothed without new products (:meth:`DensityResult.smooth`).
    """
    check_int("num_steps", num_steps, low=1)
    check_int("num_runs", num_runs, low=1)
    check_real("sigma2", sigma2, low=0.0, low_open=True)
    check_int("grid_size", grid_size, low=2)
    check_int("run_block", run_block, low=1, optional=True)
    run_block = num_runs if run_block is None else max(1, run_block)
    gen, clock, start_hvps = make_generator(seed), Stopwatch(op.device), op.matvecs
    steps = min(num_steps, op.dim)
    alphas, betas, lengths = [], [], []
    for first in range(0, num_runs, run_block):
        r = min(run_block, num_runs - first)
        starts = torch.randn(op.dim, r, generator=gen, dtype=torch.float64).to(op.device, op.dtype)
        a, b, run_lengths = lanczos_tridiagonals(op, starts, steps)
        alphas.append(a)
        betas.append(b)
        lengths.append(run_lengths)
    alpha, beta, length = torch.cat(alphas), torch.cat(betas), torch.cat(lengths)

    nodes = torch.zeros(num_runs, steps, dtype=torch.float64)
    weights = torch.zeros(num_runs, steps, dtype=torch.float64)
    for i in range(num_runs):
        n = int(length[i])
        theta, U = tridiagonal_eigh(alpha[i, :n].numpy(), beta[i, : n - 1].numpy())
        nodes[i, :n] = torch.from_numpy(np.ascontiguousarray(theta))
        weights[i, :n] = torch.from_numpy(U[0] ** 2)
    per_run_trace = op.dim * (weights * nodes).sum(dim=1)
    trace_stderr = float(per_run_trace.std(unbiased=True) / math.sqrt(num_runs)) if num_runs > 1 else math.inf

    used = weights > 0
    lo, hi = float(nodes[used].min()), float(nodes[used].max())
    pad = max(0.01, 0.01 * (hi - lo))
    grid = torch.linspace(lo - pad, hi + pad, grid_size, dtype=torch.float64)
    width = sigma2 * max(1.0, hi - lo)
    return DensityResult(
        nodes=nodes, weights=weights, alphas=alpha, betas=beta, grid=grid,
        density=gaussian_density(nodes, weights, grid, width), sigma2=width,
        trace=float(per_run_trace.mean()), trace_stderr=trace_stderr,
        hvps=op.matvecs - start_hvps, seconds=clock.seconds(),
        settings={"method": "slq", "num_steps": steps, "num_runs": num_runs, "sigma2_relative": sigma2,
                  "grid_size": grid_size, "seed": seed_record(seed, gen)},
    )
