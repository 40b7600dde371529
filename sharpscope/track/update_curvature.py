"""Curvature along the update the optimizer takes: a sharpness proxy in one product or three forwards.

With ``θ_t`` the parameters before optimizer step ``t``, ``θ_{t+1}`` after it and ``u = θ_{t+1} − θ_t``,

    κ_u = uᵀ H u / ‖u‖²,          H = ∇²L(θ_t)   (L: the tracker's probe-set objective),

the Rayleigh quotient of ``H`` at the update direction: ``κ_u ≤ λ_max(H)``, with equality when ``u`` is a
top eigenvector. For Adam/AdamW, with ``P = diag(√v̂ + ε)`` the denominator of the step just taken,

    κ_u^P = uᵀ H u / uᵀ P u

is the Rayleigh quotient of ``P^{-1/2} H P^{-1/2}`` at ``w = P^{1/2} u``, so ``κ_u^P ≤ λ_max(P⁻¹H)``: the
quantity Adam's edge ``(2+2β₁)/(η(1−β₁))`` bounds (:func:`sharpscope.thresholds.adam_edge`).

Two ways to get the numerator ``uᵀHu`` (:data:`METHODS`):

* ``"hvp"`` — one Hessian-vector product at ``θ_t``: exact up to rounding.
* ``"fd"`` — three loss evaluations (forward passes over the probe set, no backward) along the update,

      D = L(θ_t + u) − 2 L(θ_t) + L(θ_t − u) = ∫_{−1}^{1} (1 − |s|) uᵀ H(θ_t + s u) u ds,

  the curvature along the segment ``θ_t ± u`` averaged with a triangle weight (Taylor's theorem with
  integral remainder). On a quadratic ``D = uᵀHu`` exactly; in general
  ``D = uᵀHu + (1/12) ∇⁴L(θ_t)[u, u, u, u] + O(‖u‖⁶)``, and for a quartic the second term is the whole
  error. Rounding: if each loss carries a relative error ``ρ`` the quotient moves by at most
  ``ρ (|L₊| + 2|L₀| + |L₋|) / ‖u‖²``; :attr:`UpdateCurvature.rounding` is that bound at ``ρ`` = the machine
  epsilon of the objective's dtype (a loss summed over ``n`` terms errs by up to about ``n`` of those).

Cost, per reading: ``hvp`` one product (a forward and two backward passes, or forward-over-reverse);
``fd`` three forward passes. Both need ``θ_t``, captured (one parameter copy) just before the step.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from sharpscope.curvature.operators.linear_operator import LinearOperator
from sharpscope.curvature.operators.objective import Objective
from sharpscope.curvature.operators.sharded import ShardedHessianOperator
from sharpscope.errors import ConfigError
from sharpscope.validation import check_choice

METHODS = ("hvp", "fd")

def resolve_method(value: object) -> str | None:
    """The method an ``update_curvature`` setting names: None or False → None (off), True → ``"hvp"``, a
    name of :data:`METHODS` → itself; anything else raises :class:`ConfigError` naming the choices."""
    if value is None or value is False:
        return None
    if value is True:
        return "hvp"
    if not isinstance(value, str) or value not in METHODS:
        raise ConfigError(f"update_curvature must be one of {', '.join(METHODS)} (true: hvp; false or null: off), "
                          f"got {value!r}", argument="update_curvature")
    return value


@dataclass(frozen=True)
class UpdateCurvature:
    """One reading of the curvature along an update ``u``.

    ``kappa = uHu / ‖u‖²``; ``kappa_preconditioned = uHu / uᵀPu`` (None without ``P``); ``uHu`` the
    numerator (``uᵀH(θ_t)u`` for ``hvp``, the second difference ``D`` for ``fd``); ``hvps`` and ``forwards``
    the products and forward passes over the probe set it took; ``losses`` ``(L₋, L₀, L₊)`` and
    ``rounding`` (see the module docstring) for ``fd`` only. ``kappa`` is None when ``u = 0``."""

    method: str
    kappa: float | None
    kappa_preconditioned: float | None
    uHu: float
    uPu: float | None
    update_norm: float
    hvps: int
    forwards: int
    seconds: float
    losses: tuple[float, float, float] | None = None
    rounding: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The record fields (without ``kind``/``step``)."""
        out: dict[str, Any] = {"method": self.method, "kappa": self.kappa,
                               "kappa_preconditioned": self.kappa_preconditioned, "uHu": self.uHu,
                               "uPu": self.uPu, "update_norm": self.update_norm,
                               "cost": {"hvps": self.hvps, "forwards": self.forwards, "seconds": self.seconds}}
        if self.method == "fd":
            out["fd"] = {"losses": None if self.losses is None else list(self.losses), "rounding": self.rounding}
        return out


def preconditioned_norm(u: Tensor, diag_p: Tensor) -> float:
    """``uᵀPu = Σ_i P_i u_i²`` for a diagonal ``P`` given as a vector (float64)."""
    if diag_p.shape != u.shape:
        raise ConfigError(f"preconditioner has shape {tuple(diag_p.shape)}, the update {tuple(u.shape)}")
    return float((diag_p.double() * u.double().square()).sum())


@contextlib.contextmanager
def at_parameters(objective: Objective, values: Mapping[str, Tensor]) -> Iterator[None]:
    """The objective's parameters hold ``values`` (per name, in their own dtype) inside the block; the
    values they had are copied back afterwards, bit for bit, even on an error."""
    current = {n: p.detach().clone() for n, p in objective.params.items()}
    try:
        with torch.no_grad():
            for n, p in objective.params.items():
                p.copy_(values[n])
        yield
    finally:
        with torch.no_grad():
            for n, p in objective.params.items():
                p.copy_(current[n])


def _reading(norm2: float, start: float, *, num: float = math.nan, hvps: int = 0, upu: float | None = None,
             losses: tuple[float, float, float] | None = None, eps: float = 0.0) -> UpdateCurvature:
    """The reading from ``‖u‖² = norm2`` and the numerator: ``num`` for ``hvp``, or for ``fd`` (given the losses
    ``(L₋, L₀, L₊)``) ``D = L₊ − 2L₀ + L₋`` with the rounding bound ``eps (|L₊| + 2|L₀| + |L₋|) / ‖u‖²``."""
    rounding = None
    if losses is not None:
        lm, l0, lp = losses
        num = lp - 2.0 * l0 + lm
        rounding = eps * (abs(lp) + 2 * abs(l0) + abs(lm)) / norm2 if norm2 > 0 else math.inf
    kappa = num / norm2 if norm2 > 0 and math.isfinite(num) else None
    pre = num / upu if upu is not None and upu > 0 and math.isfinite(num) else None
    return UpdateCurvature("hvp" if losses is None else "fd", kappa, pre, num, upu, math.sqrt(norm2), hvps,
                           0 if losses is None else 3, time.perf_counter() - start, losses=losses, rounding=rounding)


def _product_reading(op: LinearOperator, u: Tensor, norm2: float, start: float, at_theta: AbstractContextManager[None],
                     total: Callable[[Tensor], float], upu: float | None = None) -> UpdateCurvature:
    """The ``hvp`` reading: ``uᵀHu = total(uᵀ(Hu))`` by one product taken inside ``at_theta`` (the parameters
    at ``θ_t``); no product for ``u = 0``."""
    if norm2 == 0:
        return _reading(norm2, start, num=0.0, upu=upu)
    with at_theta:
        hu = op.matvec(u)
    return _reading(norm2, start, num=total(u.double() @ hu.double()), hvps=1, upu=upu)


def curvature_along(method: str, objective: Objective, before: Mapping[str, Tensor], *,
                    op: LinearOperator | None = None, diag_p: Tensor | None = None) -> UpdateCurvature:
    """The curvature of ``objective`` along ``u = θ_now − θ_before`` at ``θ_before``.

    ``before`` holds the parameters ``θ_t`` (name → tensor, as captured before the step); the model holds
    ``θ_{t+1}``. ``method`` is ``"hvp"`` (needs ``op``, the Hessian of ``objective``: evaluated with the
    model's parameters set to ``θ_t`` for that one product, then restored) or ``"fd"`` (three evaluations of
    ``objective`` at ``θ_t − u, θ_t, θ_t + u``; the model is not touched). ``diag_p`` (flat, objective order)
    adds the preconditioned quotient."""
    check_choice("method", method, METHODS)
    missing = sorted(set(objective.params) - set(before))
    if missing:
        raise ConfigError(f"captured parameters lack {missing[:4]}: capture before the step with the same objective")
    start = time.perf_counter()
    theta0 = objective.flatten([before[n].detach().to(objective.device, objective.dtype) for n in objective.names])
    u = objective.parameter_vector() - theta0
    norm2 = float(u.double().square().sum())
    upu = None if diag_p is None else preconditioned_norm(u, diag_p)
    if method == "hvp":
        if op is None:
            raise ConfigError("method 'hvp' needs the Hessian operator op", argument="op")
        return _product_reading(op, u, norm2, start, at_parameters(objective, before), float, upu)
    points = torch.stack([theta0 - u, theta0, theta0 + u])
    lm, l0, lp = (float(v) for v in objective.evaluate(points, accuracy=False)[0].tolist())
    return _reading(norm2, start, upu=upu, losses=(lm, l0, lp), eps=torch.finfo(objective.dtype).eps)


def curvature_along_sharded(method: str, op: ShardedHessianOperator, before: Tensor) -> UpdateCurvature:
    """:func:`curvature_along` for a model sharded with ``fully_shard``: ``before`` is this rank's slices
    of ``θ_t`` (flat, :meth:`ShardedHessianOperator.local_weights` layout) and the model holds ``θ_{t+1}``.
    ``uᵀu`` and ``uᵀHu`` are sums over the ranks; ``hvp`` takes the operator's finite-difference product
    at ``θ_t``, ``fd`` three loss evaluations. No preconditioned quotient (an optimizer's state is sharded
    too). Every rank must call it; the weights are put back bit for bit."""
    check_choice("method", method, METHODS)
    start = time.perf_counter()
    after = op.local_weights()
    u = after - before.to(after.device, after.dtype)

    def total(x: Tensor) -> float:
        return float(op.allsum(x.double().reshape(1))[0])

    norm2 = total(u.double().square().sum())
    if method == "hvp":
        return _product_reading(op, u, norm2, start, op.at_weights(before), total)
    with op.at_weights(before - u):
        lm = op.loss()
    with op.at_weights(before):
        l0 = op.loss()
    return _reading(norm2, start, losses=(lm, l0, op.loss()), eps=torch.finfo(op.dtype).eps)
