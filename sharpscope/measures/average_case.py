"""Average-case sharpness ``E_z L(w + s ⊙ z) − L(w)`` and PAC-Bayes flatness (the largest admissible σ).

Draws come in antithetic pairs ``±z``: each sample is ``(L(w + s⊙z) + L(w − s⊙z))/2 − L(w)``, whose mean
is the same expectation (the distributions are symmetric) and whose variance has no term linear in
``z``. For ``L = ½ wᵀAw + bᵀw`` and ``s = 1`` a sample is exactly ``½ zᵀAz``, of mean ``½ σ² tr A``.
"""

from __future__ import annotations

import math
import statistics

import torch
from torch import Tensor

from sharpscope.curvature.operators.objective import Objective
from sharpscope.curvature.sampling import make_generator
from sharpscope.errors import ConfigError
from sharpscope.measures.perturbed import (
    Counter,
    MeasureOutput,
    PerturbedLoss,
    draw,
    example_batches,
    mean_stderr,
    perturbation_scale,
)
from sharpscope.measures.settings import SharpnessSettings

#: PAC-Bayes σ bracket: the first trial σ (relative to |w| in the magnitude-aware form), and the doublings allowed to reach the target.
SIGMA_START = 1e-2
MAX_DOUBLINGS = 60


def _pair_samples(loss: PerturbedLoss, base: float, Z: Tensor) -> list[float]:
    """``(L(w + s⊙z) + L(w − s⊙z))/2 − L(w)`` for each row ``z`` of ``Z``."""
    return [(loss.value(z) + loss.value(-z)) / 2 - base for z in Z]


def _draws(settings: SharpnessSettings, gen: torch.Generator, dim: int, like: Tensor) -> Tensor:
    """``samples`` rows of ``z``: N(0, (ρ²/d) I) in ℓ2 (``E‖z‖² = ρ²``), U[−ρ, ρ]^d in ℓ∞."""
    if settings.norm == "l2":
        return draw(gen, settings.samples, dim, "gaussian", like) * (settings.rho / math.sqrt(dim))
    return draw(gen, settings.samples, dim, "uniform", like) * settings.rho


def average_case(objective: Objective, settings: SharpnessSettings, counter: Counter) -> MeasureOutput:
    """``E_z L(w + s ⊙ z) − L(w)`` with its Monte-Carlo standard error; for m-sharpness the mean over
    sets of ``m`` examples of each set's estimate, with the standard error over the sets (which
    holds the Monte-Carlo noise of each set too)."""
    scale = perturbation_scale(objective, "adaptive" if settings.adaptive else "plain")
    gen = make_generator(settings.seed)
    per_set, stderrs, bases = [], [], []
    with objective.mode():
        for batches in example_batches(objective, settings.m):
            loss = PerturbedLoss(objective, batches, scale, counter)
            base = loss.value()
            samples = _pair_samples(loss, base, _draws(settings, gen, loss.dim, loss.w))
            per_set.append(statistics.fmean(samples))
            stderrs.append(mean_stderr(samples))
            bases.append(base)
    if len(per_set) == 1:
        value, stderr = per_set[0], stderrs[0]
    else:
        value, stderr = statistics.fmean(per_set), mean_stderr(per_set)
    details: dict[str, object] = {"loss": statistics.fmean(bases), "sets": len(per_set), "pairs": settings.samples,
                                  "distribution": "gaussian" if settings.norm == "l2" else "uniform"}
    if settings.m is not None:
        details.update(examples=len(per_set) * settings.m, per_set=per_set)
    return value, stderr, None, details


def pac_bayes(objective: Objective, settings: SharpnessSettings, counter: Counter) -> MeasureOutput:
    """PAC-Bayes flatness (Jiang et al. 2019): the largest ``σ`` with ``E L(w + σ s⊙z) − L(w) ≤ target``,
    ``z ~ N(0, I)``, ``s = 1`` or ``|w|`` (magnitude-aware). Found by bisection on ``σ`` with the same
    draws at every ``σ`` (common random numbers), so the estimated increase is a smooth function of
    ``σ``. The value is ``1/σ²`` (larger: sharper); ``stderr`` is the Monte-Carlo standard error of the
    increase at the reported ``σ`` (in ``details``)."""
    scale = perturbation_scale(objective, "adaptive" if settings.adaptive else "plain")
    gen = make_generator(settings.seed)
    with objective.mode():
        loss = PerturbedLoss(objective, None, scale, counter)
        base = loss.value()
        Z = draw(gen, settings.samples, loss.dim, "gaussian", loss.w)
        if not bool(torch.any(scale != 0)):
            raise ConfigError("the magnitude-aware PAC-Bayes σ needs nonzero weights (every |w_i| is 0)",
                              argument="adaptive")

        def increase(sigma: float) -> tuple[float, float]:
            samples = _pair_samples(loss, base, sigma * Z)
            return statistics.fmean(samples), mean_stderr(samples)

        lo, lo_stats = 0.0, (0.0, 0.0)
        hi = SIGMA_START
        hi_stats = increase(hi)
        doublings = 0
        while hi_stats[0] <= settings.target:  # expand until the target is exceeded
            if doublings == MAX_DOUBLINGS:
                raise ConfigError(f"the expected loss increase stays below target={settings.target} up to σ={hi:.3g}: "
                                  "the loss is flat at this scale (raise target)", argument="target")
            lo, lo_stats = hi, hi_stats
            hi *= 2
            hi_stats = increase(hi)
            doublings += 1
        while lo == 0:  # or shrink until it is met
            if doublings == MAX_DOUBLINGS:
                raise ConfigError(f"the expected loss increase exceeds target={settings.target} at every σ tried "
                                  f"(down to {hi:.3g}): lower the perturbation or raise target", argument="target")
            stats = increase(hi / 2)
            doublings += 1
            if stats[0] <= settings.target:
                lo, lo_stats = hi / 2, stats
            else:
                hi, hi_stats = hi / 2, stats
        evaluations = 1 + doublings
        while hi - lo > settings.tol * hi:
            mid = math.sqrt(lo * hi)
            stats = increase(mid)
            evaluations += 1
            if stats[0] <= settings.target:
                lo, lo_stats = mid, stats
            else:
                hi, hi_stats = mid, stats
    details: dict[str, object] = {"sigma": lo, "sigma_upper": hi, "increase": lo_stats[0],
                                  "increase_stderr": lo_stats[1], "loss": base, "evaluations": evaluations,
                                  "pairs": settings.samples}
    return 1 / lo**2, lo_stats[1], None, details
