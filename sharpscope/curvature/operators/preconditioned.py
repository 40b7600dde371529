"""Preconditioned sharpness: the operator ``P^{-1/2} H P^{-1/2}`` and Adam's diagonal ``P``.

An adaptive method ``x ← x − η P⁻¹ m`` is stable on a quadratic with Hessian ``H`` only while the
top eigenvalue of ``P⁻¹H`` stays below the threshold of its momentum rule (Cohen et al. 2022,
:func:`sharpscope.thresholds.adam_edge` gives ``38/η`` at ``β₁ = 0.9``). ``P⁻¹H``
is not symmetric, but for a positive diagonal ``P`` it is similar to the symmetric

    A = P^{-1/2} H P^{-1/2}        (A = P^{1/2} (P⁻¹H) P^{-1/2})

so the two have the same eigenvalues, which are also the generalized eigenvalues of the pencil
``H u = λ P u``. :class:`PreconditionedOperator` is ``A`` as a :class:`LinearOperator`, so
Lanczos, power iteration, Hutchinson and SLQ all apply to it unchanged:

    >>> from sharpscope.curvature import HessianOperator, Objective, lanczos
    >>> from sharpscope.thresholds import adam_edge
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 1)).double()
    >>> x, y = torch.randn(20, 3, dtype=torch.float64), torch.randn(20, 1, dtype=torch.float64)
    >>> objective = Objective(model, torch.nn.MSELoss(), (x, y))
    >>> adam = torch.optim.Adam(model.parameters(), lr=1e-3)
    >>> torch.nn.MSELoss()(model(x), y).backward(); adam.step()
    >>> H = HessianOperator(objective)
    >>> P = adam_preconditioner(adam, objective)       # diag(sqrt(v̂) + ε), objective order
    >>> lam = float(lanczos(PreconditionedOperator(H, P), k=1).eigenvalues[0])
    >>> lam > 0, round(adam_edge(1e-3, 0.9))           # compare λ_max(P⁻¹H) with Adam's edge
    (True, 38000)

An eigenvector ``y`` of ``A`` corresponds to the eigenvector ``P^{-1/2} y`` of ``P⁻¹H``
(:meth:`PreconditionedOperator.to_original`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor

from sharpscope.curvature.operators.linear_operator import LinearOperator
from sharpscope.curvature.operators.objective import Objective
from sharpscope.errors import ConfigError
from sharpscope.validation import check_bool, check_type

__all__ = ["PreconditionedOperator", "adam_optimizer", "adam_preconditioner"]


class PreconditionedOperator(LinearOperator):
    """``v ↦ P^{-1/2} H P^{-1/2} v`` for a symmetric operator ``H`` and a positive diagonal ``P``.

    Its eigenvalues are those of ``P⁻¹H`` (and the generalized eigenvalues of ``H u = λ P u``).
    Each product costs one product of ``op`` (which keeps its own count) plus two element-wise
    scalings.

    Args:
        op: the symmetric operator ``H`` (e.g. a :class:`~sharpscope.curvature.HessianOperator`).
        diag_p: the diagonal of ``P``, shape ``(op.dim,)``, every entry finite and ``> 0``, in the
            same flat parameter order as ``op`` (for a Hessian, the objective's ``names`` order;
            :func:`adam_preconditioner` builds it in that order). ``P^{-1/2}`` is formed in
            float64 and then cast to the operator's dtype and device.
    """

    def __init__(self, op: LinearOperator, diag_p: Tensor) -> None:
        check_type("op", op, LinearOperator, "a LinearOperator")
        check_type("diag_p", diag_p, Tensor, "a tensor")
        if diag_p.ndim != 1 or diag_p.shape[0] != op.dim:
            raise ConfigError(f"diag_p must have shape ({op.dim},) to match the operator, got {tuple(diag_p.shape)}")
        p = diag_p.detach().to(dtype=torch.float64)
        if not bool(torch.isfinite(p).all()):
            raise ConfigError("diag_p has non-finite entries")
        if not bool((p > 0).all()):
            raise ConfigError(f"diag_p must be positive everywhere (min {float(p.min()):.3g}); "
                              "a preconditioner with zero entries has no inverse square root")
        super().__init__(op.dim, op.dtype, op.device)
        self.op = op
        self.diag_p = p.to(device=op.device)
        self.inv_sqrt_p = p.rsqrt().to(device=op.device, dtype=op.dtype)

    def settle_memory(self) -> None:
        """The inner operator's :meth:`~LinearOperator.settle_memory` (the scaling keeps only ``P^{-1/2}``)."""
        self.op.settle_memory()

    def _matmat(self, V: Tensor) -> Tensor:
        s = self.inv_sqrt_p[:, None]
        return s * self.op.matmat(s * V)

    def to_original(self, vectors: Tensor) -> Tensor:
        """Map eigenvectors ``y`` of ``P^{-1/2} H P^{-1/2}`` to eigenvectors ``P^{-1/2} y`` of ``P⁻¹H``.

        Works on one vector ``(dim,)`` or columns ``(dim, m)``; the result is not normalised.
        """
        s = self.inv_sqrt_p if vectors.ndim == 1 else self.inv_sqrt_p[:, None]
        return s * vectors.to(device=self.device, dtype=self.dtype)

    def describe(self) -> dict[str, object]:
        """The inner operator's record with this one's name and the range and geometric mean of ``diag(P)``."""
        p = self.diag_p
        return {**self.op.describe(), "operator": type(self).__name__, "inner_operator": type(self.op).__name__,
                "preconditioner": {"min": float(p.min()), "max": float(p.max()),
                                   "geometric_mean": float(p.log().mean().exp())}}


def adam_optimizer(optimizer: object) -> torch.optim.Optimizer:
    """The Adam/AdamW instance behind ``optimizer`` (a wrapper such as SAM exposes ``base_optimizer``)."""
    inner = optimizer
    if not isinstance(inner, (torch.optim.Adam, torch.optim.AdamW)):
        base = getattr(optimizer, "base_optimizer", None)
        if isinstance(base, (torch.optim.Adam, torch.optim.AdamW)):
            inner = base
    if not isinstance(inner, (torch.optim.Adam, torch.optim.AdamW)):
        raise ConfigError(f"adam_preconditioner needs a torch.optim.Adam or AdamW optimizer (or a wrapper whose "
                          f"base_optimizer is one), got {type(optimizer).__name__}")
    return inner


def _as_named_params(params: object) -> list[tuple[str, Tensor]]:
    if isinstance(params, Objective):
        return list(params.params.items())
    if isinstance(params, Mapping):
        return [(str(n), p) for n, p in params.items()]
    if isinstance(params, Tensor):
        raise ConfigError("params must be an Objective, a name -> parameter mapping or a sequence of parameters, "
                          "not a single tensor")
    if isinstance(params, Iterable):
        out = [(f"#{i}", p) for i, p in enumerate(params)]
        if not all(isinstance(p, Tensor) for _, p in out):
            raise ConfigError("params must hold tensors (the parameters the objective differentiates)")
        return out
    raise ConfigError("params must be an Objective, a mapping or a sequence of parameters, "
                      f"got {type(params).__name__}")


def adam_preconditioner(optimizer: torch.optim.Optimizer, params: object, *,
                        bias_correction: bool = True) -> Tensor:
    """Adam's diagonal preconditioner ``P = sqrt(v̂) + ε`` as one flat vector in the objective's order.

    ``P`` is the element-wise denominator of the Adam/AdamW update
    ``x ← x − η m̂ / (sqrt(v̂) + ε)`` in its current state, with ``v`` the second-moment EMA
    (``max_exp_avg_sq`` when the group uses ``amsgrad``) and ``ε`` the group's ``eps``. Parameters
    are matched to the optimizer's state by tensor identity, so ``params`` must be the very tensors
    the optimizer updates.

    Args:
        optimizer: ``torch.optim.Adam`` or ``AdamW`` after at least one ``step()`` (or a wrapper,
            e.g. SAM over Adam, with that optimizer as ``base_optimizer``).
        params: the objective's parameters in its flat order: an :class:`Objective`, its
            ``objective.params`` mapping, or a sequence of the parameter tensors.
        bias_correction: how the bias correction is folded into ``P`` (an open point in Cohen
            et al. 2022; a reading the paper leaves open). ``True`` (default) uses ``v̂ = v / (1 − β₂^t)``
            with ``t`` the state's step count, which makes ``P`` exactly the denominator PyTorch
            divided by in its latest step: ``x_t − x_{t−1} = −(η/(1 − β₁^t)) P⁻¹ m_t``. ``False``
            uses the raw EMA ``v``, i.e. ``P = sqrt(v) + ε``; this is smaller by about
            ``sqrt(1 − β₂^t)`` early in training and the same once ``β₂^t ≈ 0``. The first-moment
            correction ``1/(1 − β₁^t)`` multiplies the step size, not ``P``, under either choice; it
            tends to 1 after a few tens of steps. Why the default: with the raw ``v``, ``P`` is too
            small by ``sqrt(1 − β₂^t)`` for the first thousands of steps at ``β₂ = 0.999``, so
            ``λ1(P⁻¹H)`` overshoots the ``38/η`` Adam's edge predicts by ``1/sqrt(1 − β₂^t)``; the
            measured ratios are in ``docs/conventions.md`` (Adam's preconditioner).

    Returns:
        A float64 tensor of shape ``(dim,)`` on the parameters' device, each entry ``> 0``.

    Raises:
        ConfigError: the optimizer is not Adam/AdamW, a parameter is not in any of its groups, or
            it has no state for a parameter yet (no step taken).
    """
    check_bool("bias_correction", bias_correction)
    adam = adam_optimizer(optimizer)
    named = _as_named_params(params)
    if not named:
        raise ConfigError("params is empty")
    group_of = {id(p): g for g in adam.param_groups for p in g["params"]}
    missing = [n for n, p in named if id(p) not in group_of]
    if missing:
        raise ConfigError(f"{len(missing)} parameter(s) of the objective are not optimized by this "
                          f"{type(adam).__name__}: {missing[:8]}; pass the same tensors the optimizer was built with")
    parts = []
    for name, p in named:
        group = group_of[id(p)]
        state = adam.state.get(p, {})
        key = "max_exp_avg_sq" if group.get("amsgrad", False) else "exp_avg_sq"
        if key not in state or "step" not in state:
            no_state = [n for n, q in named if "exp_avg_sq" not in adam.state.get(q, {})]
            raise ConfigError(f"the optimizer has no state yet for {len(no_state)} parameter(s) "
                              f"({no_state[:8]}): take at least one optimizer step (with a gradient for every "
                              "parameter) before computing the preconditioner")
        v = state[key].detach().to(dtype=torch.float64)
        if bias_correction:
            step = float(state["step"])
            if step < 1:
                raise ConfigError(f"parameter {name!r} has step count {step:g}; take an optimizer step first")
            beta2 = float(group["betas"][1])
            v = v / (1.0 - beta2 ** step)
        eps = float(group["eps"])
        parts.append((v.sqrt() + eps).reshape(-1))
    out = torch.cat([t.to(parts[0].device) for t in parts])
    if not bool(torch.isfinite(out).all()) or not bool((out > 0).all()):
        raise ConfigError("the Adam preconditioner is not finite and positive (eps = 0 with a zero second "
                          "moment, or a non-finite state)")
    return out
