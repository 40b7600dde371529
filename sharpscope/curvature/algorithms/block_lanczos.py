"""Block Lanczos with full re-orthogonalisation: ``b`` vectors per step, one block product each.

From an orthonormal start block ``Q_1`` (``dim × b``) the method builds an orthonormal basis
``[Q_1 … Q_m]`` of the block Krylov space ``span{Q_1, H Q_1, …, H^{m-1} Q_1}`` and the block
tridiagonal ``T_m = [Q_1 … Q_m]ᵀ H [Q_1 … Q_m]`` with diagonal blocks ``A_j = Q_jᵀ H Q_j`` and
sub-diagonal blocks ``B_j``, from the three-term relation

    H Q_j = Q_{j-1} B_{j-1}ᵀ + Q_j A_j + Q_{j+1} B_j.

The remainder ``W = H Q_j − (components on the basis)`` is orthogonalised twice against the whole
basis, then factored ``W = Q_{j+1} B_j`` by a QR followed by an SVD of its small triangle, so a
column of ``W`` that has collapsed (a singular value below ``√eps · ‖T‖``) is seen and replaced by a
fresh random direction orthogonal to everything (deflation, counted as a restart). For an eigenpair
``T_m s = θ s`` the Ritz vector ``y = [Q_1 … Q_m] s`` has residual
``‖H y − θ y‖ = ‖B_m s_m‖`` with ``s_m`` the last block's rows of ``s``: no extra product.

Each step multiplies ``b`` vectors in one :meth:`~LinearOperator.matmat` call, so an operator that
vmaps a block (Hessian-vector products on a GPU) runs it at the block price, and ``b`` copies of a
repeated eigenvalue are found, where single-vector Lanczos sees one copy of each eigenvalue.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from sharpscope.curvature.algorithms.krylov_basis import DEFAULT_CHUNK, KrylovBasis, basis_device
from sharpscope.curvature.algorithms.ritz import Stop, Which, check_ritz, ritz_result
from sharpscope.curvature.memory import MemoryBudget, gib, vector_bytes
from sharpscope.curvature.operators.linear_operator import LinearOperator
from sharpscope.curvature.results import EigenResult
from sharpscope.curvature.sampling import Stopwatch, make_generator, seed_record
from sharpscope.errors import ConfigError, ObjectiveError


def start_block(op: LinearOperator, b: int, v0: Tensor | None, gen: torch.Generator) -> Tensor:
    """An orthonormal ``(dim, b)`` start block: the span of ``v0``'s columns (one vector or ``(dim, j)``,
    ``j ≤ b``) completed by random Gaussian columns."""
    given = torch.zeros(op.dim, 0, dtype=op.dtype, device=op.device)
    if v0 is not None:
        given = v0.to(device=op.device, dtype=op.dtype)
        given = given[:, None] if given.ndim == 1 else given
        if given.ndim != 2 or given.shape[0] != op.dim:
            raise ConfigError(f"v0 must have shape ({op.dim},) or ({op.dim}, j), got {tuple(v0.shape)}")
        if given.shape[1] > b:
            raise ConfigError(f"v0 has {given.shape[1]} columns, more than the block size {b}; pass block="
                              f"{given.shape[1]} or fewer columns")
        if not bool(torch.isfinite(given).all()) or bool((given.norm(dim=0) == 0).any()):
            raise ConfigError("a column of the start block v0 is zero or not finite")
    fresh = torch.randn(op.dim, b - given.shape[1], generator=gen, dtype=torch.float64).to(op.device, op.dtype)
    Q, R = torch.linalg.qr(torch.cat([given / given.norm(dim=0), fresh], dim=1))
    diagonal = R.diagonal().abs()
    if bool((diagonal <= math.sqrt(float(torch.finfo(op.dtype).eps)) * diagonal.max()).any()):
        raise ConfigError("the columns of the start block v0 are linearly dependent")
    return Q


def _fresh_directions(op: LinearOperator, basis: KrylovBasis, kept: Tensor, n: int, gen: torch.Generator) -> Tensor:
    """``n`` random orthonormal columns orthogonal to the basis and to the columns of ``kept``."""
    F = torch.randn(op.dim, n, generator=gen, dtype=torch.float64).to(op.device, op.dtype)
    for _ in range(2):
        F, _ = basis.orthogonalize(F)
        F = F - kept @ (kept.T @ F)
    return torch.linalg.qr(F)[0]


def _next_block(op: LinearOperator, basis: KrylovBasis, Qw: Tensor, R: Tensor, width: int, floor: float,
                gen: torch.Generator) -> tuple[Tensor, np.ndarray, int]:
    """From ``W = Qw R``, the next block: ``W ≈ Q_next B`` with ``B = Σ Vᵀ`` from the SVD ``R = U Σ Vᵀ``.

    Keeps ``width`` columns of ``Q_next = Qw U``; a column whose singular value is at most ``floor`` has
    collapsed and is replaced by a fresh direction orthogonal to everything, its row of ``B`` set to
    zero in ``T``. Returns the block, the ``(width, w)`` coupling block of ``T``, and the replacements.
    """
    U, sigma, Vh = torch.linalg.svd(R)
    live = min(int((sigma > floor).sum()), width)
    kept = (Qw @ U)[:, :live]
    if live < width:
        kept = torch.cat([kept, _fresh_directions(op, basis, kept, width - live, gen)], dim=1)
    coupling = np.zeros((width, R.shape[1]))
    coupling[:live] = (sigma[:live, None] * Vh[:live]).double().cpu().numpy()
    return kept, coupling, width - live


def block_lanczos(op: LinearOperator, k: int, *, block: int, which: Which = "LA", tol: float = 1e-3,
                  max_iter: int, v0: Tensor | None = None, seed: int | torch.Generator | None = None,
                  return_eigenvectors: bool = True, stop: Stop = "residual",
                  block_rule: str = "requested", guards: int = 0, budget: MemoryBudget,
                  basis_location: str = "device") -> EigenResult:
    """The ``k`` extreme eigenpairs by block Lanczos with block size ``block``; arguments are checked
    and documented by :func:`~sharpscope.curvature.algorithms.lanczos.lanczos`, which calls this.

    ``max_iter`` counts products (basis vectors), as for single-vector Lanczos; the last block is
    narrowed to stay within it and within ``dim``. The stopping rules are the same, on the block
    residuals ``‖B_m s_m‖`` of the wanted and ``guards`` guard Ritz pairs. The basis is never
    restarted: a ``budget`` (:class:`~sharpscope.curvature.memory.MemoryBudget`) below the full basis
    (resolved by the caller) is refused, naming single-vector Lanczos, which restarts within it.
    """
    b = block
    chunk = max(DEFAULT_CHUNK, b)
    worst = -(-max_iter // chunk) * chunk + 3 * b + (k if return_eigenvectors else 0)
    if not budget.fits(worst):
        raise ConfigError(f"a block Lanczos basis of up to {max_iter} vectors of length {op.dim:,} needs "
                          f"{gib(vector_bytes(op.dim, op.dtype, worst))} and the memory budget allows "
                          f"{gib(budget.bytes or 0)} ({budget.rule}); lower max_iter, or use single-vector "
                          "Lanczos (block=None), which restarts within the budget", argument="memory_budget")
    gen = make_generator(seed)
    clock, start_hvps = Stopwatch(op.device), op.matvecs
    eps = float(torch.finfo(op.dtype).eps)
    min_vectors = min(max_iter, 2 * k + 4)  # as for single-vector Lanczos, counted in basis vectors

    basis = KrylovBasis(op.dim, op.dtype, basis_device(op.device, basis_location), chunk=chunk,
                        pinned=basis_location == "host")
    Q = start_block(op, b, v0, gen)
    T = np.zeros((max_iter + b, max_iter + b))
    steps = restarts = 0
    norm_T = 0.0
    while True:
        start = basis.size
        basis.append_columns(Q)
        size = basis.size
        W, coeffs = basis.orthogonalize(op.matmat(Q.to(op.device)))
        steps += 1
        A = coeffs[start:].double().cpu().numpy()
        if not np.isfinite(A).all() or not bool(torch.isfinite(W).all()):
            raise ObjectiveError(f"block Lanczos step {steps}: the Hessian's Rayleigh quotients overflow "
                                 f"{op.dtype} at these parameters (the curvature is not finite in this precision)")
        T[start:size, start:size] = 0.5 * (A + A.T)
        theta, S = np.linalg.eigh(T[:size, :size])
        norm_T = max(norm_T, float(np.abs(theta).max()), eps)
        width = min(b, op.dim - size, max_iter - size)
        floor = math.sqrt(eps) * norm_T
        Qw, R = torch.linalg.qr(W)  # ‖B_m x‖ = ‖W x‖ = ‖R x‖ for the residuals
        abs_residuals = np.linalg.norm(R.double().cpu().numpy() @ S[start:size], axis=0)
        check = check_ritz(theta, abs_residuals, k=k, which=which, scale=norm_T, eps=eps, size=size, stop=stop,
                           tol=tol, ready=size >= min_vectors, guards=guards)
        if check.done or width == 0:
            break
        Q, coupling, replaced = _next_block(op, basis, Qw, R, width, floor, gen)
        restarts += replaced
        T[size:size + width, start:size] = coupling
        T[start:size, size:size + width] = coupling.T

    return ritz_result(op, basis, S, theta, check, spanned=size == op.dim, rounding=size * eps * norm_T,
                       stopped=f"block Lanczos stopped after {size} products", tol=tol, stop=stop,
                       return_eigenvectors=return_eigenvectors, hvps=op.matvecs - start_hvps, seconds=clock.seconds(),
                       settings={"method": "block_lanczos", "block": b, "block_rule": block_rule, "k": k,
                                 "which": which, "tol": tol, "stop": stop, "guards": guards, "max_iter": max_iter,
                                 "min_steps": min_vectors if stop == "eigenvalue" else None, "steps": steps,
                                 "basis_vectors": size, "restarts": restarts, "warm_start": v0 is not None,
                                 "seed": seed_record(seed, gen)},
                       memory=budget.record("full block basis", basis.allocated + 3 * b + (k if return_eigenvectors else 0),
                                            limiting=False, estimate_bytes=vector_bytes(op.dim, op.dtype, worst),
                                            basis=basis_location),
                       stacklevel=4)
