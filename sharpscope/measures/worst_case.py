"""Worst-case sharpness ``max_{‖z‖≤ρ} L(w + s ⊙ z) − L(w)`` by projected gradient ascent, and Keskar's ε-sharpness.

The ascent follows APGD (Croce & Hein 2020): steps of ``η·u(g)`` (``u(g) = g/‖g‖₂`` in ℓ2, ``sign(g)``
in ℓ∞) projected on the set, with momentum 0.75, starting from ``η = 2ρ``; at checkpoints
``p₀ = 0, p₁ = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06)`` of the step budget the step is
halved, and the run goes back to its best point, when fewer than 75% of the steps since the last
checkpoint raised the loss or when neither the step nor the best value changed since then. The
first run starts at the first-order maximiser ``ρ·u(∇_z L)``, the others at uniform random points of
the set (all of them where the gradient is 0). ``z = 0`` is feasible, so the value is never below 0.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable

import torch
from torch import Tensor

from sharpscope.curvature.operators.objective import Objective
from sharpscope.curvature.sampling import make_generator
from sharpscope.measures.perturbed import (
    Counter,
    MeasureOutput,
    PerturbedLoss,
    example_batches,
    mean_stderr,
    perturbation_scale,
)
from sharpscope.measures.settings import SharpnessSettings

MOMENTUM = 0.75
INCREASE_FRACTION = 0.75


def checkpoints(steps: int) -> list[int]:
    """APGD's step indices at which the step size may be halved."""
    p = [0.0, 0.22]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    return sorted({math.ceil(q * steps) for q in p[1:] if math.ceil(q * steps) < steps})


def _direction(g: Tensor, norm: str) -> Tensor:
    if norm == "linf":
        return torch.sign(g)
    n = torch.linalg.vector_norm(g)
    return g / n if n > 0 else torch.zeros_like(g)


def _project(z: Tensor, rho: float, norm: str) -> Tensor:
    if norm == "linf":
        return z.clamp(-rho, rho)
    n = float(torch.linalg.vector_norm(z))
    return z * (rho / n) if n > rho else z


def _random_start(gen: torch.Generator, dim: int, rho: float, norm: str, like: Tensor) -> Tensor:
    if norm == "linf":
        z = (2 * torch.rand(dim, generator=gen, dtype=torch.float64) - 1) * rho
    else:
        u = torch.randn(dim, generator=gen, dtype=torch.float64)
        radius = rho * float(torch.rand(1, generator=gen, dtype=torch.float64)) ** (1.0 / dim)
        z = u / torch.linalg.vector_norm(u) * radius
    return z.to(device=like.device, dtype=like.dtype)


def ascend(value_and_grad: Callable[[Tensor], tuple[float, Tensor]], start: Tensor, rho: float, norm: str,
           steps: int) -> tuple[float, Tensor, list[float], float]:
    """One APGD run from ``start``: the best value found, its point, the best value after each step
    (``steps + 1`` entries, the first at ``start``) and the final step size."""
    eta = 2 * rho
    marks = set(checkpoints(steps))
    z = _project(start, rho, norm)
    f, g = value_and_grad(z)
    best, best_z, best_g = f, z, g
    history = [best]
    previous = z
    increases, last_eta, last_best = 0, eta, best
    since = 0
    for k in range(steps):
        y = _project(z + eta * _direction(g, norm), rho, norm)
        if k > 0:
            y = _project(z + MOMENTUM * (y - z) + (1 - MOMENTUM) * (z - previous), rho, norm)
        previous, z = z, y
        f_new, g = value_and_grad(z)
        increases += f_new > f
        f = f_new
        if f > best:
            best, best_z, best_g = f, z, g
        history.append(best)
        since += 1
        if k + 1 in marks:
            if increases < INCREASE_FRACTION * since or (eta == last_eta and best == last_best):
                eta /= 2
                previous, z, f, g = best_z, best_z, best, best_g
            increases, since, last_eta, last_best = 0, 0, eta, best
    return best, best_z, history, eta


def maximise(loss: PerturbedLoss, rho: float, norm: str, steps: int, restarts: int,
             gen: torch.Generator) -> tuple[float, float, dict[str, object]]:
    """``max_{‖z‖≤ρ} L(w + s ⊙ z)`` over ``restarts`` APGD runs: ``(L(w), max, convergence record)``.

    The record holds each run's best increase and final step, and ``last_gain``: the largest rise of a
    run's best value over its last ``max(1, steps // 10)`` steps (near 0 when the ascent has settled)."""
    zero = torch.zeros_like(loss.w)
    base, g0 = loss.value_and_grad(zero)
    window = max(1, steps // 10)
    best, gains, runs, finals = base, [], [], []
    for run in range(restarts):
        first = run == 0 and bool(torch.any(g0 != 0))  # at a stationary point every run starts at random
        start = rho * _direction(g0, norm) if first else _random_start(gen, loss.dim, rho, norm, zero)
        value, _, history, eta = ascend(loss.value_and_grad, start, rho, norm, steps)
        runs.append(value - base)
        finals.append(eta)
        gains.append(history[-1] - history[-1 - window])
        best = max(best, value)
    record: dict[str, object] = {"steps": steps, "restarts": restarts, "runs_increase": runs, "final_step": finals,
                                 "last_gain": max(gains), "last_gain_window": window,
                                 "best_run": max(range(restarts), key=lambda i: runs[i])}
    return base, best, record


def _over_sets(objective: Objective, settings: SharpnessSettings, scale_kind: str, rho: float, norm: str,
               m: int | None, counter: Counter) -> tuple[list[float], list[float], list[dict[str, object]]]:
    """Per set of batches: ``L(w)``, ``max L(w + s ⊙ z)`` and the ascent's record."""
    scale = perturbation_scale(objective, scale_kind)
    gen = make_generator(settings.seed)
    bases, maxima, records = [], [], []
    with objective.mode():
        for batches in example_batches(objective, m):
            loss = PerturbedLoss(objective, batches, scale, counter)
            base, top, record = maximise(loss, rho, norm, settings.steps, settings.restarts, gen)
            bases.append(base)
            maxima.append(top)
            records.append(record)
    return bases, maxima, records


def _merged(records: list[dict[str, object]]) -> dict[str, object]:
    if len(records) == 1:
        return records[0]
    gains = [float(r["last_gain"]) for r in records]  # type: ignore[arg-type]
    first = records[0]
    return {"steps": first["steps"], "restarts": first["restarts"], "sets": len(records),
            "last_gain": max(gains), "last_gain_mean": statistics.fmean(gains),
            "last_gain_window": first["last_gain_window"]}


def worst_case(objective: Objective, settings: SharpnessSettings, counter: Counter) -> MeasureOutput:
    """``max_{‖z‖_p≤ρ} L(w + s ⊙ z) − L(w)`` (``s = |w|`` when adaptive), averaged over sets of ``m``
    examples for m-sharpness (standard error over the sets)."""
    kind = "adaptive" if settings.adaptive else "plain"
    bases, maxima, records = _over_sets(objective, settings, kind, settings.rho, settings.norm, settings.m, counter)
    values = [top - base for base, top in zip(bases, maxima)]
    value = statistics.fmean(values)
    stderr = mean_stderr(values) if len(values) > 1 else None
    details: dict[str, object] = {"loss": statistics.fmean(bases), "sets": len(values)}
    if settings.m is not None:
        details.update(examples=len(values) * settings.m, per_set=values)
    return value, stderr, _merged(records), details


def keskar(objective: Objective, settings: SharpnessSettings, counter: Counter) -> MeasureOutput:
    """Keskar et al. (2017): ``100 · (max_{δ∈C_ε} L(w + δ) − L(w)) / (1 + L(w))`` on the box
    ``C_ε = {|δ_i| ≤ ε(|w_i| + 1)}`` (ℓ∞ ascent on ``z`` with ``δ = (|w| + 1) ⊙ z``, ``‖z‖_∞ ≤ ε``)."""
    bases, maxima, records = _over_sets(objective, settings, "keskar", settings.epsilon, "linf", None, counter)
    base, top = bases[0], maxima[0]
    value = 100 * (top - base) / (1 + base)
    details: dict[str, object] = {"loss": base, "max_loss": top}
    return value, None, records[0], details
