"""The randomized-smoothing identity behind RS, checked on a real network.

For ``u ~ Unif(S^{d−1})`` (``E[u] = 0``, ``E[uuᵀ] = I/d``), a Taylor expansion of the gradient gives

    E_u ∇f(x + ρu) − ∇f(x) = (ρ²/2) ∇tr̄(x) + O(ρ⁴),      tr̄(x) = tr ∇²f(x) / d,

(the odd terms vanish in expectation), so RS's perturbed gradient carries, in expectation, a step down the
normalised Hessian trace. :func:`smoothing_identity` estimates the left side by the mean over ``draws``
sampled directions and the right side by differentiating a Hutchinson estimate of the trace,
``∇ tr H ≈ (1/m) Σ_j ∇_x (z_jᵀ ∇²f(x) z_j)`` with Rademacher ``z_j``, and reports their cosine
similarity as a function of the number of draws.

Pairing of the draws:

* ``antithetic`` (default): each draw is the pair ``(u, −u)``, ``½(∇f(x+ρu) + ∇f(x−ρu)) − ∇f(x)
  = (ρ²/2) ∇³f(x)[u, u] + O(ρ⁴)``: the first-order term ``ρHu`` cancels exactly (so a quadratic gives 0
  and a cubic or quartic gives exactly ``(ρ²/2) ∇³f(x)[u, u]``). Two gradients a draw.
* ``independent``: ``∇f(x+ρu) − ∇f(x)``, whose zero-mean term ``ρHu`` is of order ``ρ`` against the ``ρ²``
  drift: a cosine near 0 unless the draws are very many. One gradient a draw.

Both sides are Monte-Carlo estimates, so the cosine is capped by their noise. Each side is also estimated
from two independent halves (odd and even draws; the first and second half of the probes); with
``c`` the cosine of the halves, ``√(2c/(1+c))`` estimates the cosine of the full estimate with its own
expectation (isotropic noise: the halves carry twice the full estimate's noise variance), and the
product of the two sides' values is the noise ceiling: the cosine the identity would give if it held
exactly. On a function that is not twice differentiable (ReLU, max-pooling), the smoothed gradient also
picks up the kinks crossed within ``ρ``, which the autograd trace gradient does not see: the identity
need not hold there, whatever the draws.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from sharpscope.curvature.sampling import make_generator
from sharpscope.errors import ConfigError
from sharpscope.experiments import verdicts
from sharpscope.losses import get_loss
from sharpscope.optim import sample_unit_sphere
from sharpscope.validation import check_int

PAIRINGS = ("antithetic", "independent")
CRITERION_RHO, CRITERION_COSINE = 1e-2, 0.5
CRITERION = ("cosine ≥ 0.5 at ρ = 1e-2 with all draws; read against the noise ceiling (the cosine the two "
             "estimates' own noise allows)")
NONSMOOTH_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.ELU,
                     nn.CELU, nn.SELU, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d,
                     nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
"""Layers whose output is not twice continuously differentiable in their input (kinks, argmax switches)."""

__all__ = ["CRITERION", "PAIRINGS", "identity_at_run", "judge_identity", "nonsmooth_parts", "smoothing_draw",
           "smoothing_identity", "split_half_ceiling"]


def _flat_loss(model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor], x: Tensor,
               y: Tensor) -> tuple[Callable[[Tensor], Tensor], Tensor]:
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = [p.detach() for n, p in model.named_parameters() if p.requires_grad]
    shapes = [p.shape for p in params]
    sizes = [p.numel() for p in params]
    buffers = dict(model.named_buffers())

    def f(theta: Tensor) -> Tensor:
        parts = [t.view(s) for t, s in zip(theta.split(sizes), shapes)]
        return loss_fn(functional_call(model, {**dict(zip(names, parts)), **buffers}, (x,)), y)

    return f, torch.cat([p.reshape(-1) for p in params])


def nonsmooth_parts(model: nn.Module) -> list[str]:
    """The kinds of layer in ``model`` that are not twice differentiable (:data:`NONSMOOTH_MODULES`), sorted."""
    return sorted({type(m).__name__ for m in model.modules() if isinstance(m, NONSMOOTH_MODULES)})


def smoothing_draw(grad: Callable[[Tensor], Tensor], theta: Tensor, g0: Tensor, rho: float, u: Tensor,
                   pairing: str = "antithetic") -> Tensor:
    """One draw of the left side: ``½(∇f(θ+ρu) + ∇f(θ−ρu)) − ∇f(θ)`` (antithetic) or ``∇f(θ+ρu) − ∇f(θ)``
    (independent); ``g0 = ∇f(θ)``."""
    if pairing == "antithetic":
        return (grad(theta + rho * u) + grad(theta - rho * u)) / 2 - g0
    if pairing == "independent":
        return grad(theta + rho * u) - g0
    raise ConfigError(f"pairing must be one of {', '.join(PAIRINGS)}; got {pairing!r}", argument="pairing")


def _cosine(a: Tensor, b: Tensor) -> float:
    den = float(a.norm() * b.norm())
    return float(a @ b) / den if den > 0 else math.nan


def split_half_ceiling(c: float) -> float:
    """``√(2c/(1+c))`` (0 for ``c ≤ 0``): the cosine of an average with its expectation when its two independent
    halves have cosine ``c`` (isotropic noise; each half has twice the full average's noise variance).

    >>> round(split_half_ceiling(0.6), 3)
    0.866
    """
    return math.sqrt(2 * c / (1 + c)) if c > 0 else 0.0 if c <= 0 else math.nan


def smoothing_identity(model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, y: Tensor, *,
                       rhos: Sequence[float] = (1e-3, 1e-2, 1e-1), draws: int = 256, probes: int = 64,
                       counts: Sequence[int] = (16, 64, 256), seed: int = 0,
                       pairing: str = "antithetic") -> dict[str, Any]:
    """Cosine of the mean over the first ``n`` draws (``n`` in ``counts``; a draw is a pair ``(u, −u)`` when
    ``pairing="antithetic"``) with ``(ρ²/2)∇tr̄(x)`` for each ρ, the ratio of their norms, and the noise
    ceiling (see the module docstring). The model is evaluated in eval mode in its own dtype (float64
    recommended: the differences are of order ρ²). Cost: ``(1 + len(rhos)·draws·(2 or 1))`` gradients and
    ``probes`` gradients of a Hessian-vector product, recorded as ``gradients`` and ``seconds``."""
    if pairing not in PAIRINGS:
        raise ConfigError(f"pairing must be one of {', '.join(PAIRINGS)}; got {pairing!r}", argument="pairing")
    draws = check_int("draws", draws, low=2)
    probes = check_int("probes", probes, low=2)
    counts = sorted({min(check_int("count", c, low=1), draws) for c in counts} | {draws})
    started = time.perf_counter()
    model.eval()
    f, theta = _flat_loss(model, loss_fn, x, y)
    d = theta.numel()
    grad = torch.func.grad(f)
    g0 = grad(theta)
    gen = make_generator(seed)
    halves = [torch.zeros_like(theta), torch.zeros_like(theta)]
    for j in range(probes):
        z = (torch.randint(0, 2, (d,), generator=gen, dtype=torch.float64) * 2 - 1).to(theta)

        def quad(t: Tensor, z: Tensor = z) -> Tensor:
            return torch.func.jvp(grad, (t,), (z,))[1] @ z  # zᵀ ∇²f(t) z

        halves[2 * j // probes] += torch.func.grad(quad)(theta)
    tr_grad = (halves[0] + halves[1]) / probes
    target_split = _cosine(halves[0], halves[1])
    target_ceiling = split_half_ceiling(target_split)
    out: dict[str, Any] = {"dim": d, "examples": int(x.shape[0]), "draws": draws, "probes": probes,
                           "pairing": pairing, "seed": seed, "target_split_cosine": target_split,
                           "target_ceiling": target_ceiling, "rhos": {}, "noise": {}}
    for rho in rhos:
        target = (rho**2 / 2) * tr_grad / d
        parts = [torch.zeros_like(theta), torch.zeros_like(theta)]
        rows = []
        for i in range(1, draws + 1):
            u = sample_unit_sphere([theta], gen)[0]
            parts[i % 2] += smoothing_draw(grad, theta, g0, rho, u, pairing)
            if i in counts:
                mean = (parts[0] + parts[1]) / i
                rows.append({"draws": i, "cosine": _cosine(mean, target),
                             "norm_ratio": float(mean.norm() / target.norm())})
        lhs_split = _cosine(parts[0], parts[1])
        lhs_ceiling = split_half_ceiling(lhs_split)
        out["rhos"][f"{rho:g}"] = rows
        out["noise"][f"{rho:g}"] = {"lhs_split_cosine": lhs_split, "lhs_ceiling": lhs_ceiling,
                                    "ceiling": lhs_ceiling * target_ceiling}
    out["gradients"] = 1 + len(rhos) * draws * (2 if pairing == "antithetic" else 1)
    out["hessian_vector_gradients"] = probes
    out["seconds"] = time.perf_counter() - started
    return out


def judge_identity(result: dict[str, Any], nonsmooth: Sequence[str] = ()) -> verdicts.Verdict:
    """The verdict on :data:`CRITERION` from a :func:`smoothing_identity` result; ``nonsmooth`` names the
    network's layers that are not twice differentiable (:func:`nonsmooth_parts`).

    holds: cosine ≥ 0.5. With independent draws and a lower cosine: not testable (the first-order term
    stays in the mean). Otherwise, with ``reach = cosine / ceiling``: does not hold when the noise allows
    ≥ 0.5 and the cosine is below half of what it allows; else not testable at this scale (the noise caps
    the cosine below the criterion). Non-smooth layers are named in the reason."""
    key = f"{CRITERION_RHO:g}"
    rows = (result.get("rhos") or {}).get(key) or []
    if not rows:
        return verdicts.Verdict(verdicts.NOT_RUN, f"no draws at ρ = {key}")
    cos = float(rows[-1]["cosine"])
    ceiling = float(((result.get("noise") or {}).get(key) or {}).get("ceiling", math.nan))
    kinks = (f"; the network is not twice differentiable ({', '.join(nonsmooth)}), so the smoothed gradient also "
             "picks up the kinks crossed within ρ, which ∇tr̄ does not see") if nonsmooth else ""
    at = f"cosine {cos:.3f} after {rows[-1]['draws']} {result.get('pairing', 'independent')} draws"
    if cos >= CRITERION_COSINE:
        return verdicts.Verdict(verdicts.HOLDS, f"{at}; noise ceiling {ceiling:.3f}")
    if result.get("pairing", "independent") == "independent":
        return verdicts.Verdict(verdicts.NOT_TESTABLE, f"{at}: independent (not antithetic) draws leave the "
                                "first-order term ρHu in the average as noise far larger than the O(ρ²) drift"
                                + kinks)
    reach = cos / ceiling if ceiling > 0 else math.nan
    if ceiling >= CRITERION_COSINE and not reach >= 0.5:
        why = kinks[2:] if nonsmooth else ("the mean difference points away from ∇tr̄ although the estimates' "
                                           "noise allows more: the terms beyond ρ² are not small at this ρ")
        return verdicts.Verdict(verdicts.DOES_NOT_HOLD, f"{at} against a noise ceiling of {ceiling:.3f}: {why}")
    return verdicts.Verdict(verdicts.NOT_TESTABLE, f"{at}, {reach:.0%} of the noise ceiling {ceiling:.3f}: the "
                            "estimates' own noise caps the cosine below 0.5 (more draws and probes needed)" + kinks)


def identity_at_run(run_dir: str | Path, *, examples: int = 256, **kwargs: Any) -> dict[str, Any]:
    """:func:`smoothing_identity` at the latest checkpoint of a run directory, on the first ``examples``
    examples of its training set, in float64, with the network's non-smooth layers (``nonsmooth``)."""
    from sharpscope.track import TrainConfig
    from sharpscope.track.build import build_data, build_model, load_initial_weights

    cfg = TrainConfig.from_dict(json.loads((Path(run_dir) / "config.json").read_text()))
    model, spec = build_model(cfg, torch.device("cpu"), torch.float64)
    where = load_initial_weights(str(run_dir), model, spec)
    train_set, _ = build_data(cfg)
    n = min(examples, len(train_set))
    x, y = train_set.x[:n].double(), train_set.y[:n]
    result = smoothing_identity(model, get_loss(cfg.loss), x, y, **kwargs)
    result["checkpoint"] = where
    result["nonsmooth"] = nonsmooth_parts(model)
    return result
