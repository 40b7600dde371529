"""SAM (Foret et al. 2021) and ASAM (Kwon et al. 2021) over any ``torch.optim`` base optimizer.

Ascent direction (first-order solution of ``max_{‖T⁻¹ε‖_p ≤ ρ} L(w + ε)``; Foret et al., Kwon et al.)::

    h = T (g + wd·w)            g = ∇L(w) (unscaled);  wd·w only if wd_in_perturbation
    δ = ρ · sign(h) |h|^{q−1} / (‖h‖_q^{q−1} + perturb_eps)      1/p + 1/q = 1
    ε = T δ

    p = 2:   ε = ρ T² (g + wd·w) / (‖T (g + wd·w)‖₂ + perturb_eps)
    p = ∞:   ε = ρ T sign(g + wd·w)
    SAM:     T = I;   ASAM: T = diag(|w| + eta) on groups with ``sam_adaptive`` (official η_A = 0.01)

Then ``w ← w + ε``, the second gradient ``∇L(w + ε)`` is computed, ``w`` is restored exactly and
the base optimizer steps with that gradient. The norm is taken jointly over all parameters that
have a gradient. Hyper-parameters live in the param groups as ``sam_rho``, ``sam_adaptive`` and
``sam_eta`` (prefixed so they never collide with a base optimizer's own keys, e.g. Adadelta's
``rho``); per-group values override the constructor's.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from sharpscope.errors import ConfigError
from sharpscope.optim._base import Tensors, TwoPassOptimizer, global_norm
from sharpscope.validation import check_bool, check_real

__all__ = ["SAM", "asam_param_groups"]


def _check_p(p: Any) -> float:
    out = check_real("p", p, allow_inf=True)
    if not out > 1.0:
        raise ConfigError(f"p must be > 1 (2 for SAM, float('inf') for the sign perturbation), got {p!r}")
    return out


class SAM(TwoPassOptimizer):
    r"""Sharpness-aware minimisation wrapping ``base_optimizer(params, **base_kwargs)``.

    Args:
        params: parameters or param groups (groups may set ``sam_rho``, ``sam_adaptive``,
            ``sam_eta`` and any base-optimizer option).
        base_optimizer: a ``torch.optim.Optimizer`` class, e.g. ``torch.optim.SGD``.
        rho: perturbation radius ρ (``>= 0``; 0 gives the plain base optimizer, at twice the cost).
        adaptive: ASAM, ``T_w = |w| + eta``. Kwon et al.'s code applies it to parameters whose
            name contains "weight" only; :func:`asam_param_groups` builds those groups. With
            plain ``model.parameters()`` it applies to every parameter.
        p: 2 (default), ``float('inf')``, or any ``p > 1`` (dual-norm formula above).
        eta: ASAM offset η_A.
        wd_in_perturbation: add ``weight_decay·w`` (the group's base-optimizer ``weight_decay``)
            to the gradient used for the *ascent*, as the official JAX code does by putting the
            L2 term in the loss. The descent's weight decay is always the base optimizer's own.
            Default False (PyTorch-port convention: weight decay only in the base step).
        perturb_eps: added to the denominator of the normalisation (0 allowed).
        model: optional; ``step(closure)`` then runs the first pass in ``maybe_no_sync(model)``
            (DDP) and the second in ``frozen_bn_stats(model)`` (BatchNorm keeps first-pass stats).
        scaler: optional ``torch.amp.GradScaler``. The norm is computed on unscaled gradients
            (divided by ``scaler.get_scale()`` on the fly; ``.grad`` is not modified by the first
            step) and ``second_step`` goes through ``scaler.step``.
        **base_kwargs: passed to ``base_optimizer`` (``lr``, ``momentum``, ``weight_decay``, ...).

    Attributes after ``first_step``: ``last_grad_norm`` (‖g‖₂ at ``w``, unscaled, without the
    decay term — the ‖g‖ of :func:`sharpscope.thresholds.sam_edge`) and
    ``last_perturbation_skipped`` (True when the gradients were non-finite or ρ = 0).

    Example (closure form; the closure zeroes, evaluates, back-propagates, returns the loss):

        >>> import copy
        >>> from sharpscope.optim.batchnorm import frozen_bn_stats
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 1))
        >>> twin = copy.deepcopy(model)
        >>> x, y, loss_fn = torch.randn(16, 3), torch.randn(16, 1), torch.nn.MSELoss()
        >>> opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9, model=model)
        >>> def closure():
        ...     opt.zero_grad()
        ...     loss = loss_fn(model(x), y)
        ...     loss.backward()
        ...     return loss
        >>> loss = opt.step(closure)

    Explicit form (same result; gradient clipping, if any, goes before ``second_step``):

        >>> opt2 = SAM(twin.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9, model=twin)
        >>> loss_fn(twin(x), y).backward();  opt2.first_step(zero_grad=True)
        >>> with frozen_bn_stats(twin):
        ...     loss_fn(twin(x), y).backward()
        >>> opt2.second_step(zero_grad=True)
        >>> all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), twin.state_dict().values()))
        True
    """

    def __init__(
        self,
        params: Any,
        base_optimizer: type[torch.optim.Optimizer],
        rho: float = 0.05,
        *,
        adaptive: bool = False,
        p: float = 2,
        eta: float = 0.01,
        wd_in_perturbation: bool = False,
        perturb_eps: float = 1e-12,
        model: nn.Module | None = None,
        scaler: torch.amp.GradScaler | None = None,
        **base_kwargs: Any,
    ) -> None:
        rho = check_real("rho", rho, low=0.0)
        eta = check_real("eta", eta, low=0.0)
        check_bool("adaptive", adaptive)
        check_bool("wd_in_perturbation", wd_in_perturbation)
        self.p = _check_p(p)
        self.perturb_eps = check_real("perturb_eps", perturb_eps, low=0.0)
        self.wd_in_perturbation = wd_in_perturbation
        defaults = {"sam_rho": rho, "sam_adaptive": adaptive, "sam_eta": eta}
        super().__init__(params, base_optimizer, defaults, model=model, scaler=scaler, **base_kwargs)
        for group in self.param_groups:
            check_real("sam_rho", group["sam_rho"], low=0.0)
            check_real("sam_eta", group["sam_eta"], low=0.0)

    @property
    def rho(self) -> float:
        """ρ of the first param group; setting it sets every group (for ρ schedules)."""
        return float(self.param_groups[0]["sam_rho"])

    @rho.setter
    def rho(self, value: float) -> None:
        value = check_real("rho", value, low=0.0)
        for group in self.param_groups:
            group["sam_rho"] = value

    # -- hooks for SparseSAM ----------------------------------------------------------------
    def _ascent_input(self, params: list[Tensor], h: Tensors) -> Tensors:
        """Transform ``h`` before normalisation (identity here). Must not modify ``h`` in place."""
        return h

    def _mask_perturbation(self, params: list[Tensor], eps: Tensors) -> Tensors:
        """Transform ``ε`` after normalisation (identity here); may modify ``eps`` in place."""
        return eps

    # -- the perturbation ----------------------------------------------------------------
    def _perturbation(self, params: list[Tensor], grads: list[Tensor], groups: list[dict[str, Any]],
                      inv_scale: float) -> list[Tensor] | None:
        segments: list[tuple[dict[str, Any], list[Tensor], list[Tensor]]] = []
        for p, g, group in zip(params, grads, groups):
            if not segments or segments[-1][0] is not group:
                segments.append((group, [], []))
            segments[-1][1].append(p)
            segments[-1][2].append(g)

        hs: list[Tensors] = []
        ts: list[Tensors | None] = []
        for group, ps, gs in segments:
            wd = float(group.get("weight_decay", 0.0) or 0.0) if self.wd_in_perturbation else 0.0
            adaptive = bool(group["sam_adaptive"])
            h: Tensors = gs
            if inv_scale != 1.0 or wd != 0.0 or adaptive:
                h = torch._foreach_mul(gs, inv_scale)
                if wd != 0.0:
                    torch._foreach_add_(h, ps, alpha=wd)
            t: Tensors | None = None
            if adaptive:
                t = torch._foreach_abs(ps)
                torch._foreach_add_(t, float(group["sam_eta"]))
                torch._foreach_mul_(h, t)
            hs.append(self._ascent_input(ps, h))
            ts.append(t)

        flat_h = [x for h in hs for x in h]
        q = 1.0 if math.isinf(self.p) else self.p / (self.p - 1.0)
        h_norm = global_norm(flat_h, math.inf if math.isinf(self.p) else q)
        g_norm = h_norm if all(h is gs for h, (_, _, gs) in zip(hs, segments)) and q == 2.0 \
            else global_norm(grads, 2.0)
        h_val, g_val = torch.stack([h_norm, g_norm.to(h_norm.device)]).double().tolist()
        self.last_grad_norm = g_val * inv_scale if math.isfinite(g_val) else g_val
        if not (math.isfinite(h_val) and math.isfinite(g_val)):
            return None  # non-finite first-pass gradients: no perturbation
        if all(float(group["sam_rho"]) == 0.0 for group, _, _ in segments):
            return None

        eps: list[Tensor] = []
        for (group, ps, _), h, t in zip(segments, hs, ts):
            rho = float(group["sam_rho"])
            e: Tensors
            if self.p == 2.0:
                e = torch._foreach_mul(h, rho / (h_val + self.perturb_eps))
            elif math.isinf(self.p):
                e = torch._foreach_sign(h)
                torch._foreach_mul_(e, rho)
            else:
                e = [torch.sign(x) * x.abs().pow(q - 1.0) for x in h]
                torch._foreach_mul_(e, rho / (h_val ** (q - 1.0) + self.perturb_eps))
            if t is not None:
                torch._foreach_mul_(e, t)
            eps.extend(self._mask_perturbation(ps, e))
        return eps


def asam_param_groups(model: nn.Module, **group_options: Any) -> list[dict[str, Any]]:
    """Param groups with ASAM's normalisation on weight tensors only (Kwon et al.'s code).

    Parameters whose name contains ``"weight"`` get ``sam_adaptive=True``; all others
    (biases, ...) get ``sam_adaptive=False`` (``T = I``). Extra options go into both groups.
    Frozen parameters (``requires_grad=False``) are left out; empty groups are dropped.
    """
    weights: list[nn.Parameter] = []
    others: list[nn.Parameter] = []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (weights if "weight" in name else others).append(param)
    groups = [
        {"params": weights, "sam_adaptive": True, **group_options},
        {"params": others, "sam_adaptive": False, **group_options},
    ]
    return [g for g in groups if g["params"]]
