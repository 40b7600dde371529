"""Rank correlation of a measure with generalisation over a population of models (Jiang et al. 2019).

Pure functions on plain numbers (numpy and ``scipy.stats``):

* :func:`kendall_tau` — Kendall's τ_b of two sequences (``scipy.stats.kendalltau``), which corrects
  for ties: ``τ_b = (C − D) / √((C + D + T_x)(C + D + T_y))`` over the ``n(n−1)/2`` pairs;
  :func:`tau_rows` is the same, vectorised over the rows of resamples.
* :func:`bootstrap_tau` — a percentile bootstrap interval of τ, models resampled with replacement.
* :func:`tau_null` — the permutation null of τ (``y`` shuffled against ``x``): a two-sided p-value for
  "no correlation" and the critical ``|τ|`` at that level.
* :func:`tau_mde` — before running: the smallest ``|τ|`` that ``n`` models can tell from 0, the critical
  value of the null (detected half the time) and the normal-approximation MDE at a given power from the
  null's standard deviation ``√(2(2n+5) / (9n(n−1)))``.
* :func:`granulated_tau` — Jiang et al.'s granulated τ: for each hyperparameter axis, τ within every group
  of models equal in all *other* axes (groups of ≥ 2 models), averaged over groups; ``Ψ`` is the mean over
  axes.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

from sharpscope.errors import ConfigError
from sharpscope.validation import check_int, check_real, check_seed

__all__ = ["bootstrap_tau", "granulated_tau", "kendall_tau", "tau_mde", "tau_null", "tau_rows"]


def _pair(x: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if a.ndim != 1 or a.shape != b.shape:
        raise ConfigError(f"x and y must be two 1-D sequences of one length, got shapes {a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ConfigError("x and y must be finite (drop the models whose measure failed first)")
    return a, b


def _tau(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return float(stats.kendalltau(a, b, variant="b").statistic)


def tau_rows(a: np.ndarray, b: np.ndarray, *, chunk: int = 256) -> np.ndarray:
    """τ_b of each row of ``a`` against the same row of ``b`` (both ``(R, n)``), vectorised for the
    resampling tests: ``Σ_{i<j} sgn(a_i − a_j) sgn(b_i − b_j) / √(n_a n_b)`` with ``n_a``, ``n_b`` the
    pairs untied in ``a`` and in ``b``; NaN where a row is constant. Equals :func:`kendall_tau` row by row."""
    iu = np.triu_indices(a.shape[1], 1)
    out = np.empty(len(a))
    for s in range(0, len(a), chunk):
        sa = np.sign(a[s:s + chunk, :, None] - a[s:s + chunk, None, :])[:, iu[0], iu[1]]
        sb = np.sign(b[s:s + chunk, :, None] - b[s:s + chunk, None, :])[:, iu[0], iu[1]]
        denom = np.sqrt(np.count_nonzero(sa, axis=1) * np.count_nonzero(sb, axis=1).astype(float))
        with np.errstate(invalid="ignore", divide="ignore"):
            out[s:s + chunk] = np.where(denom > 0, (sa * sb).sum(axis=1) / np.where(denom > 0, denom, 1), np.nan)
    return out


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's τ_b of ``x`` and ``y``; NaN with fewer than 2 values or when either is constant."""
    return _tau(*_pair(x, y))


def bootstrap_tau(x: Sequence[float], y: Sequence[float], *, resamples: int = 2000, level: float = 0.95,
                  seed: int = 0) -> dict[str, Any]:
    """τ_b with a percentile bootstrap interval: models resampled with replacement ``resamples`` times
    (seeded); resamples where τ is undefined (a constant resample) are dropped and counted."""
    a, b = _pair(x, y)
    check_int("resamples", resamples, low=10)
    check_real("level", level, low=0.0, high=1.0, low_open=True, high_open=True)
    check_seed("seed", seed)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(resamples, len(a)))
    draws = tau_rows(a[idx], b[idx])
    kept = draws[np.isfinite(draws)]
    q = (1 - level) / 2
    low, high = (float(np.quantile(kept, q)), float(np.quantile(kept, 1 - q))) if len(kept) else (math.nan, math.nan)
    return {"tau": _tau(a, b), "low": low, "high": high, "level": level, "resamples": resamples,
            "undefined_resamples": int(len(draws) - len(kept)), "seed": seed, "n": len(a),
            "method": "percentile bootstrap over models"}


def tau_null(x: Sequence[float], y: Sequence[float], *, resamples: int = 2000, level: float = 0.95,
             seed: int = 0) -> dict[str, Any]:
    """The permutation test of "no correlation": τ_b of ``x`` against ``resamples`` shuffles of ``y``.

    ``p_value = (1 + #{|τ_perm| ≥ |τ|}) / (resamples + 1)`` (two-sided); ``critical`` is the ``level``
    quantile of ``|τ_perm|`` (an observed ``|τ|`` above it rejects at ``1 − level``); ``null_sd`` the
    spread of the null."""
    a, b = _pair(x, y)
    check_int("resamples", resamples, low=10)
    check_real("level", level, low=0.0, high=1.0, low_open=True, high_open=True)
    check_seed("seed", seed)
    tau = _tau(a, b)
    rng = np.random.default_rng(seed)
    null = tau_rows(np.broadcast_to(a, (resamples, len(a))), rng.permuted(np.tile(b, (resamples, 1)), axis=1))
    null = null[np.isfinite(null)]
    if not math.isfinite(tau) or not len(null):
        return {"tau": tau, "p_value": math.nan, "critical": math.nan, "null_sd": math.nan, "level": level,
                "resamples": resamples, "seed": seed, "n": len(a), "method": "permutation"}
    extreme = int(np.sum(np.abs(null) >= abs(tau) - 1e-12))
    return {"tau": tau, "p_value": (1 + extreme) / (len(null) + 1), "critical": float(np.quantile(np.abs(null), level)),
            "null_sd": float(np.std(null, ddof=1)), "level": level, "resamples": resamples, "seed": seed,
            "n": len(a), "method": "permutation"}


def tau_mde(n: int, *, level: float = 0.95, power: float = 0.8, resamples: int = 4000, seed: int = 0) -> dict[str, Any]:
    """The smallest ``|τ|`` that ``n`` models (no ties) can tell from 0, computed before the study runs.

    ``critical``: the ``level`` quantile of ``|τ|`` under the permutation null (a true ``|τ|`` there is
    detected about half the time); ``mde``: ``(z_{(1+level)/2} + z_{power}) · sd_0`` with the null's
    standard deviation ``sd_0 = √(2(2n+5) / (9n(n−1)))`` (normal approximation). A measured ``|τ|``
    below ``critical`` is inconclusive, not evidence of no correlation."""
    check_int("n", n, low=3)
    check_real("power", power, low=0.0, high=1.0, low_open=True, high_open=True)
    ranks = [float(i) for i in range(n)]
    null = tau_null(ranks, ranks, resamples=resamples, level=level, seed=seed)
    sd0 = math.sqrt(2 * (2 * n + 5) / (9 * n * (n - 1)))
    z = float(stats.norm.ppf((1 + level) / 2) + stats.norm.ppf(power))
    return {"n": n, "critical": null["critical"], "null_sd": null["null_sd"], "null_sd_formula": sd0,
            "mde": min(1.0, z * sd0), "level": level, "power": power, "resamples": resamples, "seed": seed}


def granulated_tau(values: Sequence[float], gaps: Sequence[float], configs: Sequence[Mapping[str, Hashable]],
                   axes: Sequence[str]) -> dict[str, Any]:
    """Jiang et al.'s granulated Kendall τ of a measure (``values``) with ``gaps`` over models ``configs``.

    For each axis ``a`` of ``axes``, models are grouped by their values on every other axis; in each
    group of at least 2 models ``τ_b`` of values against gaps is taken, and ``ψ_a`` is the mean over the
    groups where τ is defined (a group whose measure or gap is constant is skipped and counted).
    ``Ψ`` is the mean of ``ψ_a`` over the axes where it is defined."""
    a, b = _pair(values, gaps)
    if len(configs) != len(a):
        raise ConfigError(f"configs has {len(configs)} entries for {len(a)} values")
    names = list(axes)
    missing = sorted({ax for c in configs for ax in names if ax not in c})
    if not names or missing:
        raise ConfigError(f"axes must be non-empty keys of every config; missing {missing}" if missing else
                          "axes must name at least one hyperparameter")
    out: dict[str, Any] = {}
    for axis in names:
        groups: dict[tuple[Hashable, ...], list[int]] = {}
        for i, c in enumerate(configs):
            groups.setdefault(tuple(c[o] for o in names if o != axis), []).append(i)
        taus = [_tau(a[idx], b[idx]) for idx in groups.values() if len(idx) >= 2]
        defined = [t for t in taus if math.isfinite(t)]
        out[axis] = {"tau": float(np.mean(defined)) if defined else math.nan, "groups": len(defined),
                     "undefined_groups": len(taus) - len(defined), "taus": defined}
    psis = [v["tau"] for v in out.values() if math.isfinite(v["tau"])]
    return {"axes": out, "psi": float(np.mean(psis)) if psis else math.nan}
