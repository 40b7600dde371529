"""The stability threshold that matches an optimizer, read from the optimizer itself.

:func:`default_thresholds` inspects the optimizer's class and param group and returns the edge
its update rule has on a quadratic (:mod:`sharpscope.thresholds`):

==========================================  =================  ================================
optimizer (param group 0)                   rule               compared with
==========================================  =================  ================================
``SGD(lr=η)``                               ``gd_edge``        λ_max(H): ``2/η``
``SGD(momentum=β)``                         ``momentum_edge``  λ_max(H): ``(2+2β)/η``
``SGD(momentum=β, nesterov=True)``          ``momentum_edge``  λ_max(H): ``(2+2β)/(η(1+2β))``
``SGD(momentum=β, dampening=β)``            ``ema_momentum_edge``  λ_max(H): ``(2+2β)/(η(1−β))``
``Adam``/``AdamW(betas=(β₁, β₂))``          ``adam_edge``      λ_max(P⁻¹H), **not** λ_max(H)
``SAM(SGD, rho=ρ)``                         ``sam_edge``       λ_max(H): SAM-edge(η, ρ, ‖g‖)
==========================================  =================  ================================

``‖g‖`` for the SAM-edge is the gradient norm of the measured objective at the current,
unperturbed iterate, i.e. the full-batch gradient norm in full-batch training. In mini-batch
training SAM normalises the gradient of its mini-batch instead: the tracker then also records
that norm and the SAM-edge computed from it (:func:`batch_sam_edge`, a ``"sam_batch"`` record after
the step). The SAM-edge is derived for normalised SAM (p = 2, not adaptive, all coordinates) over
plain SGD, and extended here to heavy-ball momentum (:func:`sharpscope.thresholds.sam_edge`);
for other SAM set-ups (ASAM, Sparse SAM, Nesterov) no edge applies (``edge`` is None) and the
formula's value without momentum is kept as ``sam_edge_indicative`` with ``derived_for`` saying
what it assumes.

Weight decay. ``SGD``/``Adam``/``SAM`` with ``weight_decay = wd`` descend
``L + (wd/2)‖θ‖²``, whose Hessian is ``H + wd·I``: the tracker measures ``H`` (the loss on the
probe set), so ``"weight_decay"`` is recorded and the eigenvalues plus ``wd`` are what the edge
bounds. AdamW's decoupled decay is not part of the gradient and is only recorded.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from sharpscope.errors import SharpscopeError
from sharpscope.io.jsonsafe import as_number
from sharpscope.io.records import Measurement, SamBatch
from sharpscope.thresholds import adam_edge, ema_momentum_edge, gd_edge, momentum_edge, sam_edge


def _sgd_rule(group: dict[str, Any]) -> tuple[str, float]:
    lr = float(group["lr"])
    beta = float(group.get("momentum", 0.0) or 0.0)
    if beta == 0.0:
        return "gd_edge", gd_edge(lr)
    if group.get("nesterov", False):
        return "momentum_edge", momentum_edge(lr, beta, nesterov=True)
    if float(group.get("dampening", 0.0) or 0.0) == beta:
        return "ema_momentum_edge", ema_momentum_edge(lr, beta)
    return "momentum_edge", momentum_edge(lr, beta)


def default_thresholds(step: int, optimizer: torch.optim.Optimizer | None,
                       grad_norm: float | None) -> dict[str, Any]:
    """``{"rule", "edge", "on", <rule>: value, "gd_edge": 2/η, "lr": η, ...}`` for ``optimizer``.

    ``edge`` is the threshold of the optimizer's own update rule; ``on`` names the eigenvalue it
    bounds. Returns ``{}`` for no optimizer, and only ``gd_edge`` (as a reference line) for an
    optimizer this table does not cover. ``step`` is unused (schedules read ``lr`` live).
    """
    del step
    if optimizer is None or not optimizer.param_groups or "lr" not in optimizer.param_groups[0]:
        return {}
    group = optimizer.param_groups[0]
    lr = float(group["lr"])
    if not lr > 0:
        return {"lr": lr}
    out: dict[str, Any] = {"lr": lr, "gd_edge": gd_edge(lr), "on": "lambda_max(H)"}
    try:
        from sharpscope.optim import SAM

        if isinstance(optimizer, SAM):
            rho = float(group.get("sam_rho", 0.0))
            out["rho"] = rho
            out["rule"] = "sam_edge"
            beta = sam_edge_momentum(optimizer)
            plain = beta is not None
            value = (sam_edge(lr, rho, grad_norm, beta or 0.0)
                     if grad_norm is not None and math.isfinite(grad_norm) else None)
            out["edge"] = value if plain else None
            out["sam_edge" if plain else "sam_edge_indicative"] = value
            out["derived_for"] = _derived_for(beta)
        elif isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
            beta1 = float(group["betas"][0])
            out.update(rule="adam_edge", edge=adam_edge(lr, beta1), adam_edge=adam_edge(lr, beta1),
                       on="lambda_max(P^-1 H), P = diag(sqrt(v_hat) + eps)")
        elif isinstance(optimizer, torch.optim.SGD):
            rule, edge = _sgd_rule(group)
            out.update(rule=rule, edge=edge)
            out[rule] = edge
        else:
            out.update(rule="gd_edge", edge=None, note=f"no threshold known for {type(optimizer).__name__}; "
                                                        "gd_edge is a reference line")
    except SharpscopeError as e:  # e.g. an lr or beta outside the formula's range
        out.update(edge=None, error=str(e))
    wd = float(group.get("weight_decay", 0.0) or 0.0)
    if wd:
        out["weight_decay"] = wd
        out["weight_decay_note"] = ("decoupled (AdamW): not in the gradient" if isinstance(optimizer, torch.optim.AdamW)
                                    else "coupled: the descended Hessian is H + weight_decay*I; compare "
                                         "eigenvalues + weight_decay with the edge")
    return out


def sam_edge_momentum(optimizer: torch.optim.Optimizer) -> float | None:
    """The momentum β the SAM-edge is derived for with ``optimizer`` (0.0 for SAM over plain SGD), or
    None where no edge is derived: normalised SAM (p = 2, not adaptive, every coordinate perturbed) over
    ``torch.optim.SGD`` with heavy-ball momentum (dampening 0, not Nesterov) or none."""
    from sharpscope.optim import SAM

    if type(optimizer) is not SAM or not isinstance(optimizer.base_optimizer, torch.optim.SGD):
        return None  # subclasses (Sparse SAM) perturb part of the coordinates: a different edge
    group = optimizer.param_groups[0]
    if getattr(optimizer, "p", 2) != 2 or group.get("sam_adaptive", False):
        return None
    beta = float(group.get("momentum", 0.0) or 0.0)
    if beta and (group.get("nesterov", False) or float(group.get("dampening", 0.0) or 0.0) != 0.0):
        return None
    return beta


def _derived_for(beta: float | None) -> str:
    if beta is None:
        return "sam(p=2) over gd (this optimizer differs: no edge applies)"
    if beta == 0.0:
        return "sam(p=2) over gd"
    return (f"sam(p=2) over heavy-ball sgd(momentum={beta:g}): the same linearisation with (2+2β)/η, an "
            "extension of the published edge")


def batch_sam_edge(step: int, optimizer: torch.optim.Optimizer,
                   batch_sharpness: Mapping[str, Any] | None = None) -> SamBatch | None:
    """The :class:`~sharpscope.io.records.SamBatch` record of SAM's step from ``θ_t``: the norm of the
    mini-batch gradient it normalised (``last_grad_norm``) and the SAM-edge from that norm (None where no
    edge applies); None for an optimizer that is not SAM or has not stepped. ``batch_sharpness`` (λ_max of
    the loss on that mini-batch at ``θ_t``, with its residual and cost) is added when given."""
    from sharpscope.optim import SAM

    norm = getattr(optimizer, "last_grad_norm", None) if isinstance(optimizer, SAM) else None
    if norm is None:
        return None
    group = optimizer.param_groups[0]
    lr, rho = float(group["lr"]), float(group.get("sam_rho", 0.0))
    beta = sam_edge_momentum(optimizer)
    applies = beta is not None and math.isfinite(norm) and lr > 0
    out: dict[str, Any] = {"step": int(step), "batch_grad_norm": float(norm),
                           "sam_edge_batch": sam_edge(lr, rho, float(norm), beta) if applies and beta is not None
                           else None,
                           "derived_for": _derived_for(beta)}
    if batch_sharpness is not None:
        out["batch_sharpness"] = dict(batch_sharpness)
    return SamBatch.made(out)


def bounded_sharpness(record: Measurement) -> tuple[str, float | None]:
    """``(name, value)`` of the sharpness a measurement's threshold bounds (the table above):
    ``λ_max(P⁻¹H)`` from ``preconditioned_eigenvalues`` under the ``adam_edge`` rule, else
    ``λ_max`` from ``eigenvalues``; the value is None when the record does not hold it as a finite
    number. A run summary's last measurement is :attr:`~sharpscope.io.records.RunSummary.final_measurement`."""
    adam = record.threshold_rule == "adam_edge"
    value = as_number(record.preconditioned_lambda_max if adam else record.lambda_max)
    return ("λ_max(P⁻¹H)" if adam else "λ_max"), value if math.isfinite(value) else None
