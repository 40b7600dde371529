"""Lanczos with full re-orthogonalisation: extreme eigenpairs with residuals, and raw tridiagonals for SLQ.

After ``m`` steps from a unit vector ``q_1`` the method has an orthonormal basis ``Q_m`` of the
Krylov space ``span{q_1, H q_1, …, H^{m-1} q_1}`` and the tridiagonal ``T_m = Q_mᵀ H Q_m``
(diagonal ``α``, off-diagonal ``β``). For an eigenpair ``T_m s = θ s`` the Ritz vector
``y = Q_m s`` has residual ``‖H y − θ y‖ = β_m |s_m|``, known without another product, which is
how convergence is checked at every step: on that residual, or on the eigenvalue error bound
``r²/δ`` it implies given the gap ``δ`` to the other Ritz values. Each new vector is orthogonalised twice against the whole
basis (classical Gram–Schmidt, "twice is enough"), which keeps ghost copies of converged
eigenvalues out of the spectrum.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import numpy as np
import torch
from torch import Tensor

from sharpscope.curvature.algorithms.krylov_basis import (
    BASIS_LOCATIONS,
    DEFAULT_CHUNK,
    BasisLocation,
    KrylovBasis,
    basis_device,
)
from sharpscope.curvature.algorithms.ritz import (
    DEFAULT_STOP,
    Stop,
    Which,
    check_ritz,
    ritz_result,
    tridiagonal_eigh,
    wanted_indices,
)
from sharpscope.curvature.algorithms.vectors import allsum_on, vector_norm
from sharpscope.curvature.memory import MemoryBudgetSpec, parse_budget, resolve_budget, vector_bytes
from sharpscope.curvature.operators.linear_operator import LinearOperator, check_operator
from sharpscope.curvature.results import EigenResult
from sharpscope.curvature.sampling import Stopwatch, make_generator, probes, seed_record
from sharpscope.errors import ConfigError, ObjectiveError
from sharpscope.validation import check_choice, check_int, check_tol

#: Guard Ritz pairs that must converge beside the wanted ones (see :func:`lanczos`).
DEFAULT_GUARDS = 1
#: Vectors a Lanczos run holds beside its basis at most: the operator's product and the two passes of its
#: re-orthogonalisation, or the next vector and a restart's scratch slice.
WORK_VECTORS = 3


#: The relative asymmetry ``|⟨u, Av⟩ − ⟨Au, v⟩| / ‖T‖`` above which Lanczos refuses an operator (or four
#: times the operator's measured product deviation, when that is larger: fast products are symmetric
#: only to their own accuracy).
SYMMETRY_TOL = 0.05


def check_symmetric(op: LinearOperator, forward: float, backward: float, scale: float) -> float:
    """The relative gap between ``⟨q_1, A q_2⟩`` and ``⟨A q_1, q_2⟩`` (both known after two Lanczos steps,
    no extra product); :class:`ConfigError` above :data:`SYMMETRY_TOL`. Lanczos assumes a symmetric
    operator: on a non-symmetric one it returns numbers that are eigenvalues of neither it nor its
    symmetric part."""
    gap = abs(forward - backward) / scale
    record = op.precision_record() or {}
    deviation = record.get("deviation") if isinstance(record, dict) else None
    limit = max(SYMMETRY_TOL, 4 * float(deviation)) if isinstance(deviation, int | float) else SYMMETRY_TOL
    if gap > limit:
        raise ConfigError(f"the operator is not symmetric: <q1, A q2> = {forward:.6g} but <A q1, q2> = {backward:.6g} "
                          f"(relative gap {gap:.2g} > {limit:g}); Lanczos needs a symmetric operator", argument="op")
    return gap


def default_max_iter(dim: int, k: int) -> int:
    """The Lanczos step limit when none is given: ``min(d, max(100, 20k))`` for ``d`` parameters
    (enough for ``k`` well-separated eigenvalues; never more steps than dimensions)."""
    return min(dim, max(100, 20 * k))


def _start_vector(op: LinearOperator, v0: Tensor | None, gen: torch.Generator) -> Tensor:
    if v0 is None:
        v = probes(op, 1, "gaussian", gen)[:, 0]
    else:
        v = v0.to(device=op.device, dtype=op.dtype)
        if v.ndim == 2:  # warm start from earlier eigenvectors: their sum spans the same directions
            v = v.sum(dim=1)
        if v.shape != (op.dim,):
            raise ConfigError(f"v0 must have shape ({op.dim},) or ({op.dim}, j), got {tuple(v0.shape)}")
    norm = vector_norm(op, v)
    if not torch.isfinite(norm) or norm == 0:
        raise ConfigError("the start vector v0 is zero or not finite")
    return v / norm


def block_size_for(op: LinearOperator, k: int, block: int | Literal["auto"] | None) -> tuple[int, str]:
    """The block size :func:`lanczos` uses, and why: ``None`` or 1, single-vector; an integer, that
    size; ``"auto"``, ``k`` capped at the operator's probes per pass (``op.block_size`` when it has one)
    and at least 2."""
    if block is None:
        return 1, "single vector (default)"
    if block == "auto":
        cap = getattr(op, "block_size", None)
        b = max(2, min(k, cap)) if isinstance(cap, int) else max(2, k)
        return min(b, op.dim), (f"auto: k={k} capped at the operator's block size {cap}" if isinstance(cap, int)
                                else f"auto: k={k}") + (", at least 2" if k < 2 else "")
    check_int("block", block, low=1, high=op.dim)
    return block, "requested"


def lanczos(op: LinearOperator, k: int = 1, *, which: Which = "LA", tol: float = 1e-3,
            max_iter: int | None = None, v0: Tensor | None = None, seed: int | torch.Generator | None = None,
            return_eigenvectors: bool = True, stop: Stop = DEFAULT_STOP,
            block: int | Literal["auto"] | None = None, guards: int = DEFAULT_GUARDS,
            memory_budget: MemoryBudgetSpec = None, basis: BasisLocation = "device") -> EigenResult:
    """The ``k`` extreme eigenpairs of a symmetric operator.

    Two stopping rules, both relative to ``|θ|`` (floored at ``√eps · ‖T‖`` for eigenvalues near
    zero), checked after every step for every wanted Ritz pair:

    * ``stop="residual"`` (default): the relative Ritz residual ``‖H y − θ y‖ / |θ| < tol``. The
      eigenvalue error is then at most ``tol·|θ|`` from the nearest eigenvalue and usually about its
      square; the eigenvectors are accurate too.
    * ``stop="eigenvalue"``: the estimated eigenvalue error bound
      ``min(r, r²/δ) / |θ| < tol`` (see :func:`ritz_error_bounds`), after at least ``2k + 4``
      steps (fewer, and the next Ritz values are averages over the bulk that overstate the gap).
      Since the eigenvalue error is about the square of the residual, this stops much earlier for
      the same accuracy in ``θ``. The bound assumes the Krylov space has separated the wanted
      eigenvalue from its neighbours: eigenvalues closer together than the residual (a cluster not
      yet resolved) can make it optimistic by up to the cluster's width. Not the default for that
      reason (a measured case: ``docs/large-models.md``).

    Either way the result reports both the residuals and the error bounds. After ``max_iter`` steps
    (default ``min(dim, max(100, 20 k))``) it warns with :class:`ConvergenceWarning` and reports
    ``converged=False``. When the Krylov space becomes invariant before ``k`` pairs are found it
    continues from a fresh random vector orthogonal to the basis.

    Memory (see :mod:`sharpscope.curvature.memory`): when the worst case, ``max_iter`` basis vectors
    plus a few working ones and the returned Ritz vectors, fits in ``memory_budget`` the basis grows
    in chunks of 16 vectors as steps are taken (strategy ``"full basis"``). Otherwise the basis is
    capped at what the budget holds and the run restarts whenever it is full, keeping the wanted and
    guard Ritz vectors and as many more of the wanted end as fill half the basis (thick restart, Wu &
    Simon 2000; strategy ``"thick restart"``). The projected matrix is then tridiagonal plus an arrow
    coupling the kept Ritz vectors to the next vector, and the Ritz residuals are still ``β |s_m|``,
    so the stopping rules and bounds are unchanged; ``max_iter`` still counts products. A restart
    loses the information outside the kept vectors, so it can take more products than a full basis
    for the same tolerance. Only a budget below ``k + guards + 2`` basis vectors is refused.
    ``settings["memory"]`` records the strategy, the budget and the peak bytes of the vectors held.

    Guards: the run stops only once ``guards`` Ritz pairs beyond the ``k`` wanted ones meet the
    same test (see :func:`~sharpscope.curvature.algorithms.ritz.check_ritz`); their measures are in
    ``settings["guard_measure"]``. ``guards=0`` reproduces the plain rule.

    Args:
        which: ``"LA"`` (largest, the sharpness), ``"SA"`` (most negative), ``"LM"`` (largest
            magnitude) or ``"BE"`` (both ends); see :func:`wanted_indices` for the order returned.
        v0: start vector, or a ``(dim, j)`` block of earlier eigenvectors to warm-start from.
        seed: seed (or generator) for the random start vector and restarts.
        stop: ``"eigenvalue"`` or ``"residual"``, the quantity ``tol`` bounds.
        guards: extra Ritz pairs that must converge before the wanted ones are reported (default 1).
        memory_budget: vectors the run may hold: None (half the free memory of the basis' device),
            bytes, or a string such as ``"24 vectors"`` or ``"8GiB"``.
        basis: ``"device"`` keeps the Krylov basis beside the operator; ``"host"`` keeps it in (pinned)
            host memory while the operator's products stay on its device (for a GPU whose memory the
            model fills; each step moves two vectors between host and device).
        block: ``None`` (default) for single-vector Lanczos; an integer ``b ≥ 2`` for block Lanczos
            (:mod:`sharpscope.curvature.algorithms.block_lanczos`), which multiplies ``b`` vectors per step in
            one block product and finds up to ``b`` copies of a repeated eigenvalue; ``"auto"`` for
            ``b = k`` capped at the operator's probes per pass, and at least 2. ``max_iter`` still counts products,
            and ``hvps`` counts vectors. Block Lanczos needs more products than single-vector
            Lanczos for the same accuracy, so it pays only where a block of ``b`` products costs
            well under ``b`` single ones (vmapped products on a GPU) or where eigenvalues repeat;
            it is not the default for ``k > 1`` (products and seconds measured against single-vector
            Lanczos: ``docs/speed-options.md``). The block size and the rule that chose it are in
            the settings.
    """
    check_operator(op)
    check_int("k", k, low=1)
    if k > op.global_dim:
        raise ConfigError(f"k must be between 1 and the dimension {op.global_dim}, got {k}")
    check_choice("which", which, get_args(Which))
    check_tol("tol", tol)
    check_int("max_iter", max_iter, low=1, optional=True)
    check_choice("stop", stop, get_args(Stop))
    check_int("guards", guards, low=0)
    check_choice("basis", basis, BASIS_LOCATIONS)
    parse_budget(memory_budget)
    max_iter = default_max_iter(op.global_dim, k) if max_iter is None else min(int(max_iter), op.global_dim)
    if max_iter < k:
        raise ConfigError(f"max_iter={max_iter} is below k={k}")
    guards = min(guards, op.global_dim - k)
    where = basis_device(op.device, basis)
    budget = resolve_budget(memory_budget, op.dim, op.dtype, where, op.settle_memory, op.common_count)
    b, block_rule = block_size_for(op, k, block)
    if b > 1:
        from sharpscope.curvature.algorithms.block_lanczos import block_lanczos

        if allsum_on(op) is not None:
            raise ConfigError(f"block={block!r}: block Lanczos is not available for an operator whose vectors are "
                              "split over processes (its QR needs whole vectors); use block=None", argument="block")

        if b > max_iter:
            raise ConfigError(f"block={b} exceeds max_iter={max_iter} (max_iter counts products)")
        return block_lanczos(op, k, block=b, which=which, tol=tol, max_iter=max_iter, v0=v0, seed=seed,
                             return_eigenvectors=return_eigenvectors, stop=stop, block_rule=block_rule,
                             guards=guards, budget=budget, basis_location=basis)
    work = WORK_VECTORS + (k if return_eigenvectors else 0)
    chunk = min(max_iter, DEFAULT_CHUNK)
    worst = -(-max_iter // chunk) * chunk
    if budget.fits(worst + work):
        capacity, strategy = max_iter, "full basis"
    else:
        capacity = (budget.vectors or 0) - work
        if capacity < k + guards + 2:
            raise budget.refuse(f"Lanczos for k={k} with {guards} guard(s) on vectors of length {op.dim:,}",
                                k + guards + 2 + work)
        chunk, worst, strategy = capacity, capacity, "thick restart"
    min_steps = min(max_iter, 2 * k + 4)  # before this the next Ritz values are bulk averages, not gaps
    gen = make_generator(seed)
    clock, start_hvps = Stopwatch(op.device), op.matvecs
    eps = float(torch.finfo(op.dtype).eps)

    Q = KrylovBasis(op.dim, op.dtype, where, chunk=chunk, pinned=basis == "host", allsum=allsum_on(op))
    Q.append(_start_vector(op, v0, gen))
    alphas: list[float] = []
    betas: list[float] = []
    T = np.zeros((0, 0))  # the projected matrix after a thick restart (tridiagonal plus an arrow)
    restarts = thick_restarts = steps = 0
    scale = eps
    symmetry_gap: float | None = None
    while True:
        j = Q.size - 1
        w, coeffs = Q.orthogonalize(op.matvec(Q.vector(j).to(op.device)))
        steps += 1
        c = coeffs.double().cpu().numpy()
        beta = float(vector_norm(op, w))
        if not (math.isfinite(float(c[j])) and math.isfinite(beta)):
            raise ObjectiveError(f"Lanczos step {steps}: the Hessian's Rayleigh quotients overflow {op.dtype} "
                                 "at these parameters (the curvature is not finite in this precision)")
        if thick_restarts == 0:
            alphas.append(float(c[j]))
            theta, S = tridiagonal_eigh(np.array(alphas), np.array(betas))
            if j == 1 and betas[0] > 0:  # ⟨q_1, A q_2⟩ against ⟨A q_1, q_2⟩ = β_1: a free symmetry test
                symmetry_gap = check_symmetric(op, float(c[0]), betas[0], max(np.abs(theta).max(), eps))
        else:  # column j of QᵀHQ: its diagonal, its coupling to q_{j-1} and, after a restart, the arrow
            T[: j + 1, j] = T[j, : j + 1] = c[: j + 1]
            theta, S = np.linalg.eigh(T[: j + 1, : j + 1])
        scale = max(scale, float(np.abs(theta).max()))
        check = check_ritz(theta, beta * np.abs(S[-1]), k=k, which=which, scale=scale, eps=eps, size=Q.size,
                           stop=stop, tol=tol, ready=steps >= min_steps, guards=guards)
        if check.done or steps == max_iter or (thick_restarts == 0 and Q.size == op.global_dim):
            break
        if beta <= math.sqrt(eps) * scale:  # invariant subspace: continue from a fresh direction
            w, _ = Q.orthogonalize(probes(op, 1, "gaussian", gen)[:, 0].to(where))
            beta, restarts = 0.0, restarts + 1
            w = w / vector_norm(op, w)
        else:
            w = w / beta
        if Q.size == capacity:  # thick restart: keep the wanted end's Ritz vectors, continue from w
            keep = wanted_indices(theta, max(k + guards, capacity // 2), which)
            Q.restart(torch.as_tensor(S[:, keep]))
            T = np.zeros((capacity, capacity))
            T[np.arange(len(keep)), np.arange(len(keep))] = theta[keep]
            thick_restarts += 1
        elif thick_restarts == 0:
            betas.append(beta)
        Q.append(w)
        del w  # stored in the basis: not held as a working vector through the next product

    memory = budget.record(strategy, Q.allocated + work, limiting=strategy != "full basis", estimate_bytes=vector_bytes(op.dim, op.dtype, worst + work),
                           basis=basis, thick_restarts=thick_restarts)
    return ritz_result(op, Q, S, theta, check, spanned=thick_restarts == 0 and Q.size == op.global_dim,
                       rounding=Q.size * eps * scale, stopped=f"Lanczos stopped after {steps} steps", tol=tol,
                       stop=stop, return_eigenvectors=return_eigenvectors, hvps=op.matvecs - start_hvps,
                       seconds=clock.seconds(),
                       settings={"method": "lanczos", "block": 1, "block_rule": block_rule, "k": k, "which": which,
                                 "tol": tol, "stop": stop, "guards": guards, "max_iter": max_iter,
                                 "min_steps": min_steps if stop == "eigenvalue" else None, "steps": steps,
                                 "restarts": restarts, "warm_start": v0 is not None, "seed": seed_record(seed, gen),
                                 "symmetry_gap": symmetry_gap},
                       memory=memory)
