"""Spectral density by stochastic Lanczos quadrature (Golub–Welsch; Ghorbani, Krishnan & Xiao 2019).

For a unit start vector ``v`` and ``m`` Lanczos steps, ``T_m = U diag(θ) Uᵀ`` gives a Gauss
quadrature of the spectral measure seen from ``v``: nodes ``θ_j`` and weights ``τ_j = U_{1j}²``
(summing to 1), so ``vᵀ f(H) v ≈ Σ_j τ_j f(θ_j)``. Averaging over random starts estimates the
eigenvalue density ``(1/d) Σ_i δ(t − λ_i)``, smoothed here with a Gaussian kernel of variance
``σ² = sigma2 · max(1, λ̂_max − λ̂_min)``.

The quadrature is exact for polynomials of degree ``2m − 1``; the smoothed density needs as many
nodes as it takes to resolve the kernel ``N(t; λ, σ²)`` over the spectrum, which depends on the
spectrum and on ``σ``. With ``tol`` each run stops as soon as its own smoothed measure has stopped
changing (:func:`run_has_settled`), instead of after a fixed number of steps.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Literal, get_args

import numpy as np
import torch
from torch import Tensor

from sharpscope.curvature.algorithms.ritz import ConvergenceWarning, tridiagonal_eigh
from sharpscope.curvature.algorithms.vectors import allsum_on, column_norms
from sharpscope.curvature.memory import MemoryBudgetSpec, resolve_budget
from sharpscope.curvature.operators.linear_operator import LinearOperator, check_operator
from sharpscope.curvature.results import DensityResult, gaussian_density
from sharpscope.curvature.sampling import Stopwatch, make_generator, probes, seed_record
from sharpscope.validation import check_choice, check_int, check_real, check_tol

Reorthogonalize = Literal["full", "local"]
REORTHOGONALIZE: tuple[str, ...] = get_args(Reorthogonalize)
PATIENCE = 2  # consecutive settled steps before a run stops
STOP_RULE = (f"a run stops once {PATIENCE} consecutive steps have each moved its smoothed quadrature measure by "
             "at most tol in L1 and its extreme nodes by at most tol kernel widths")


def quadrature(alphas: np.ndarray, betas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gauss quadrature of one run: nodes ``θ`` (ascending) and weights ``τ_j = U_{1j}²`` of ``T``."""
    theta, U = tridiagonal_eigh(alphas, betas)
    return theta, U[0] ** 2


def kernel_variance(sigma2: float, lo: float, hi: float) -> float:
    """The smoothing kernel's variance ``σ² = sigma2 · max(1, hi − lo)`` for nodes spanning ``[lo, hi]``."""
    return sigma2 * max(1.0, hi - lo)


def smoothed_l1(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray], width: float) -> float:
    """``∫ |φ_a − φ_b| dt`` for two quadrature measures ``(θ, τ)`` smoothed with ``N(0, width)``.

    ``φ = Σ_j τ_j N(t; θ_j, width)``. The integral is a Riemann sum on a grid of spacing ``σ/2``
    spanning both sets of nodes ± 6σ: within 3% of the exact value (the error comes from the kinks
    of ``|φ_a − φ_b|`` where the densities cross), ample for a stopping test. For unit measures
    the distance lies in ``[0, 2]``.
    """
    sigma = math.sqrt(width)
    lo = min(a[0].min(), b[0].min()) - 6 * sigma
    hi = max(a[0].max(), b[0].max()) + 6 * sigma
    step = sigma / 2
    grid = torch.arange(lo, hi + step, step, dtype=torch.float64)
    nodes = torch.from_numpy(np.concatenate([a[0], b[0]]))[None]
    weights = torch.from_numpy(np.concatenate([a[1], -b[1]]))[None]
    total = 0.0
    for chunk in grid.split(2048):  # bounded memory for narrow kernels over wide spectra
        total += float(gaussian_density(nodes, weights, chunk, width).abs().sum())
    return total * step


def run_has_settled(previous: tuple[np.ndarray, np.ndarray], current: tuple[np.ndarray, np.ndarray],
                    sigma2: float, tol: float) -> bool:
    """Whether one more Lanczos step changed a run's density by at most ``tol``.

    Both quadratures are smoothed with the kernel ``σ² = sigma2 · max(1, range)`` of the current
    nodes' range; the step is settled when their L1 distance (:func:`smoothed_l1`) is at most
    ``tol`` and neither extreme node moved by more than ``tol · σ``. Once the quadrature converges
    geometrically, the change over one step is about the distance still to go (measured ratios:
    ``docs/large-models.md``).
    """
    theta = current[0]
    width = kernel_variance(sigma2, float(theta[0]), float(theta[-1]))
    sigma = math.sqrt(width)
    ends_moved = max(abs(theta[0] - previous[0][0]), abs(theta[-1] - previous[0][-1]))
    return bool(ends_moved <= tol * sigma) and smoothed_l1(previous, current, width) <= tol


def orthogonalize_rows(w: Tensor, basis: Tensor,
                       allsum: Callable[[Tensor], Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """Remove from the rows of ``w`` (``(r, dim)``) their components on ``basis`` (``(r, j, dim)``), twice.

    Returns the orthogonalised rows and the accumulated coefficients ``(r, j)``. ``allsum`` sums the
    coefficients over the slices of vectors split over processes.
    """
    coeffs = torch.zeros(basis.shape[0], basis.shape[1], dtype=w.dtype, device=w.device)
    for _ in range(2):
        c = torch.bmm(basis, w[:, :, None])
        if allsum is not None:
            c = allsum(c)
        w = w - torch.bmm(basis.transpose(1, 2), c)[:, :, 0]
        coeffs += c[:, :, 0]
    return w, coeffs


def lockstep_tridiagonals(op: LinearOperator, starts: Tensor, max_steps: int, *, sigma2: float,
                          tol: float | None = None,
                          reorthogonalize: Reorthogonalize = "full") -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Lanczos runs from the columns of ``starts`` (``(dim, r)``) in lockstep, with full re-orthogonalisation.

    All active runs share each :meth:`~LinearOperator.matmat` call. A run leaves the block when its
    Krylov space becomes invariant (its quadrature is then exact) and, with ``tol``, when
    :func:`run_has_settled` has held for :data:`PATIENCE` consecutive steps, so the block shrinks and
    products are spent only on unsettled runs. The bases of the active runs are kept contiguous
    (compacted when a run leaves), so each step works on views, never on copies of the bases.
    Returns ``alphas`` and ``betas`` (``(r, max_steps)``, zero-padded; ``betas[:, i]`` couples steps
    ``i`` and ``i+1``), the per-run ``lengths`` and whether each run ``settled`` (``False``: it
    reached ``max_steps`` still changing; always ``False`` without ``tol`` unless exact).

    ``reorthogonalize="local"`` keeps only each run's last two basis vectors (memory ``2`` instead of
    ``max_steps`` vectors per run) and orthogonalises each new vector against those two, twice: the
    three-term recurrence with local re-orthogonalisation. Orthogonality to older vectors is then
    lost once Ritz values converge, which adds spurious copies of converged extreme nodes. They
    take quadrature nodes the bulk needs until the runs are long enough; the trace is unaffected
    (measured distances from the fully re-orthogonalised density: ``docs/large-models.md``).
    """
    r = starts.shape[1]
    max_steps = min(max_steps, op.global_dim)
    allsum = allsum_on(op)
    eps = float(torch.finfo(op.dtype).eps)
    slots = max_steps if reorthogonalize == "full" else 2
    basis = torch.zeros(r, slots, op.dim, dtype=op.dtype, device=op.device)  # rows: the active runs
    basis[:, 0] = (starts / column_norms(op, starts)).T
    alphas = torch.zeros(r, max_steps, dtype=torch.float64)
    betas = torch.zeros(r, max_steps, dtype=torch.float64)
    lengths = torch.full((r,), max_steps, dtype=torch.int64)
    settled = torch.zeros(r, dtype=torch.bool)
    calm = [0] * r
    previous: list[tuple[np.ndarray, np.ndarray] | None] = [None] * r
    active = torch.arange(r)
    for j in range(max_steps):
        here = j % slots
        w = op.matmat(basis[:, here].T).T
        w, coeffs = orthogonalize_rows(w, basis[:, : min(j + 1, slots)], allsum)
        alphas[active, j] = coeffs[:, here].double().cpu()
        norms = column_norms(op, w.T)
        betas[active, j] = norms.double().cpu()
        if j + 1 == max_steps:
            break
        scale = alphas[active, : j + 1].abs().amax(dim=1).clamp_min(eps)
        stop = betas[active, j] <= math.sqrt(eps) * scale  # invariant subspace: exact quadrature
        for n, i in enumerate(active.tolist()):
            if tol is None or stop[n]:
                continue
            current = quadrature(alphas[i, : j + 1].numpy(), betas[i, :j].numpy())
            before = previous[i]
            calm[i] = calm[i] + 1 if before is not None and run_has_settled(before, current, sigma2, tol) else 0
            previous[i] = current
            stop[n] = calm[i] >= PATIENCE
        settled[active[stop]] = True
        lengths[active[stop]] = j + 1
        if bool(stop.any()):
            keep = (~stop).to(op.device)
            basis, w, norms, active = basis[keep], w[keep], norms[keep], active[~stop]
            if active.numel() == 0:
                break
        basis[:, (j + 1) % slots] = w / norms[:, None]
    if max_steps == op.global_dim and reorthogonalize == "full":  # the runs still active span the whole space: exact
        settled[:] = True
    return alphas, betas, lengths, settled


def sampling_error_l1(nodes: Tensor, weights: Tensor, grid: Tensor, width: float) -> float:
    """Estimated L1 sampling error of the mean density over ``R`` runs: ``√(2/π) ∫ s(t) dt``.

    ``s(t)`` is the standard error over runs of the per-run smoothed densities at ``t``; were the
    pointwise errors normal, ``E|φ̄(t) − E φ̄(t)| = √(2/π) s(t)`` and the integral is the expected
    L1 distance of the mean density from its expectation (the density at infinitely many runs).
    An estimate from the runs themselves (how close it comes: ``docs/large-models.md``). Infinite
    for one run. It covers the random starts only, not the
    truncation of the runs.
    """
    runs = nodes.shape[0]
    if runs < 2:
        return math.inf
    per_run = torch.stack([gaussian_density(nodes[i:i + 1], weights[i:i + 1], grid, width) for i in range(runs)])
    return math.sqrt(2 / math.pi) * float(torch.trapezoid(per_run.std(dim=0) / math.sqrt(runs), grid))


def slq_density(op: LinearOperator, num_steps: int = 90, num_runs: int = 10, *, sigma2: float = 1e-5,
                grid_size: int = 1000, run_block: int | None = None, tol: float | None = None,
                seed: int | torch.Generator | None = None, memory_budget: MemoryBudgetSpec = None,
                reorthogonalize: Reorthogonalize | Literal["auto"] = "auto") -> DensityResult:
    """Smoothed spectral density from ``num_runs`` Lanczos runs of up to ``num_steps`` steps each.

    Runs advance together, ``run_block`` at a time, sharing each operator call. Memory (see
    :mod:`sharpscope.curvature.memory`): a run with full re-orthogonalisation holds
    ``num_steps + 3`` vectors, so ``run_block`` (default: all runs) is capped at the runs whose
    bases fit in ``memory_budget`` and the rest follow in later chunks (the same numbers: each run
    has its own start vector). When not even one full basis fits, ``reorthogonalize="auto"``
    switches to ``"local"`` (see :func:`lockstep_tridiagonals`: 5 vectors a run); ``"full"`` then
    refuses. The strategy, the runs per chunk and the peak bytes are in ``settings["memory"]``. The grid spans the extreme nodes ± 1% of their
    range (at least ± 0.01). The result keeps the raw tridiagonals so the density can be
    re-smoothed without new products (:meth:`DensityResult.smooth`).

    ``tol`` (off by default) stops each run on its own as soon as its smoothed density has
    settled: after two consecutive steps that each moved it by at most ``tol`` in L1 (the densities
    integrate to 1, so the distance lies in ``[0, 2]``) and moved its extreme nodes by at most
    ``tol`` kernel widths (see :func:`run_has_settled`). ``num_steps`` is then the most steps a
    run may take; runs still changing there are counted in ``settings["settled_runs"]`` and a
    :class:`ConvergenceWarning` says so. The remaining truncation error of a settled run is about
    ``tol`` in L1; the sampling error of ``num_runs`` random starts comes on top of it.
    ``settings["run_steps"]`` holds the steps each run took. ``density_error`` estimates the
    sampling error of the random starts in the same L1 units (:func:`sampling_error_l1`): a ``tol``
    well below it buys no accuracy.
    """
    check_operator(op)
    check_int("num_steps", num_steps, low=1)
    check_int("num_runs", num_runs, low=1)
    check_real("sigma2", sigma2, low=0.0, low_open=True)
    check_int("grid_size", grid_size, low=2)
    check_int("run_block", run_block, low=1, optional=True)
    if tol is not None:
        check_tol("tol", tol)
    check_choice("reorthogonalize", reorthogonalize, ("auto", *REORTHOGONALIZE))
    steps = min(num_steps, op.global_dim)
    budget = resolve_budget(memory_budget, op.dim, op.dtype, op.device, op.settle_memory, op.common_count)
    mode: Reorthogonalize = "full"
    if reorthogonalize == "local" or (reorthogonalize == "auto" and not budget.fits(steps + 3)):
        mode = "local"
    per_run = steps + 3 if mode == "full" else 5
    if not budget.fits(per_run):
        raise budget.refuse(f"an SLQ run of {steps} steps with {mode} re-orthogonalisation", per_run)
    fit = num_runs if budget.vectors is None else budget.vectors // per_run
    run_block = min(num_runs if run_block is None else max(1, run_block), fit)
    gen, clock, start_hvps = make_generator(seed), Stopwatch(op.device), op.matvecs
    alphas, betas, lengths, settled = [], [], [], []
    for first in range(0, num_runs, run_block):
        r = min(run_block, num_runs - first)
        # one draw per run, so a run's start vector does not depend on how the runs are chunked
        starts = probes(op, r, "gaussian", gen)
        a, b, run_lengths, run_settled = lockstep_tridiagonals(op, starts, steps, sigma2=sigma2, tol=tol,
                                                               reorthogonalize=mode)
        settled.append(run_settled)
        alphas.append(a)
        betas.append(b)
        lengths.append(run_lengths)
    alpha, beta, length = torch.cat(alphas), torch.cat(betas), torch.cat(lengths)

    nodes = torch.zeros(num_runs, steps, dtype=torch.float64)
    weights = torch.zeros(num_runs, steps, dtype=torch.float64)
    for i in range(num_runs):
        n = int(length[i])
        theta, tau = quadrature(alpha[i, :n].numpy(), beta[i, : n - 1].numpy())
        nodes[i, :n] = torch.from_numpy(np.ascontiguousarray(theta))
        weights[i, :n] = torch.from_numpy(np.ascontiguousarray(tau))
    per_run_trace = op.global_dim * (weights * nodes).sum(dim=1)
    trace_stderr = float(per_run_trace.std(unbiased=True) / math.sqrt(num_runs)) if num_runs > 1 else math.inf

    used = weights > 0
    lo, hi = float(nodes[used].min()), float(nodes[used].max())
    pad = max(0.01, 0.01 * (hi - lo))
    grid = torch.linspace(lo - pad, hi + pad, grid_size, dtype=torch.float64)
    width = kernel_variance(sigma2, lo, hi)
    settings: dict[str, object] = {
        "method": "slq", "num_steps": steps, "num_runs": num_runs, "sigma2_relative": sigma2,
        "grid_size": grid_size, "seed": seed_record(seed, gen), "run_steps": length.tolist(),
        "stop": "fixed steps" if tol is None else STOP_RULE, "tol": tol, "reorthogonalize": mode,
        "memory": budget.record(f"chunks of {run_block} run(s), {mode} re-orthogonalisation",
                                run_block * per_run, limiting=run_block < num_runs or mode == "local",
                                run_block=run_block)}
    if tol is not None:
        count = int(torch.cat(settled).sum())
        settings["settled_runs"] = count
        if count < num_runs:
            warnings.warn(f"{num_runs - count} of {num_runs} SLQ runs reached num_steps={steps} with their density "
                          f"still changing by more than tol={tol:g}; raise num_steps or tol",
                          ConvergenceWarning, stacklevel=2)
    return DensityResult(
        nodes=nodes, weights=weights, alphas=alpha, betas=beta, grid=grid,
        density=gaussian_density(nodes, weights, grid, width), sigma2=width,
        trace=float(per_run_trace.mean()), trace_stderr=trace_stderr,
        hvps=op.matvecs - start_hvps, seconds=clock.seconds(), settings=settings,
        density_error=sampling_error_l1(nodes, weights, grid, width),
    )
