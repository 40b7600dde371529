"""Evidence helpers: comparing runs at equal training loss and judging differences against seed noise.

Pure functions on plain numbers (numpy/scipy only), so that claims drawn from several runs are
stated the same way everywhere:

* :func:`interpolate_at_loss` reads a quantity along one run at the first time its training loss
  falls to given levels; :func:`common_loss_levels` picks levels that every run reaches.
* :func:`seed_stats` and :func:`compare_seeds` summarise per-seed values and decide whether one arm
  beats another: Welch's interval of the difference (with the estimator's own standard error) and a
  verdict from :mod:`sharpscope.experiments.verdicts`.
* :func:`binomial_stderr` is the standard error of an accuracy measured on ``n`` examples.
* :func:`spearman_with_ci` is a Spearman rank correlation with a percentile bootstrap interval.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from itertools import pairwise
from typing import Any

import numpy as np

from sharpscope.experiments import statistics, verdicts

__all__ = ["VERDICTS", "binomial_stderr", "common_loss_levels", "compare_seeds", "interpolate_at_loss",
           "seed_stats", "spearman_with_ci"]

VERDICTS = verdicts.VERDICTS  # the labels, defined in sharpscope.experiments.verdicts
MIN_SEEDS = verdicts.MIN_SEEDS


def _as_float(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def _valid_records(losses: Sequence[float], values: Sequence[float]) -> list[tuple[float, float]]:
    """The ``(loss, value)`` pairs in order, without non-finite pairs and non-positive losses."""
    if len(losses) != len(values):
        raise ValueError(f"losses and values differ in length: {len(losses)} != {len(values)}")
    out = []
    for loss, value in zip(losses, values, strict=True):
        lf, vf = _as_float(loss), _as_float(value)
        if math.isfinite(lf) and math.isfinite(vf) and lf > 0:
            out.append((lf, vf))
    return out


def _at_level(records: list[tuple[float, float]], level: float) -> float:
    if not records or not (math.isfinite(level) and level > 0) or level > records[0][0]:
        return math.nan
    for (l0, v0), (l1, v1) in pairwise(records):
        if l0 == level:
            return v0
        if l0 >= level >= l1:
            # Linear in log(loss): v = v0 + (v1 - v0) * (log l0 - log level) / (log l0 - log l1).
            t = (math.log(l0) - math.log(level)) / (math.log(l0) - math.log(l1))
            return v0 + t * (v1 - v0)
    last_loss, last_value = records[-1]
    return last_value if last_loss == level else math.nan


def interpolate_at_loss(losses: Sequence[float], values: Sequence[float], levels: Sequence[float]) -> list[float]:
    """The value of a quantity at the first time the training loss falls to each level.

    ``losses`` and ``values`` are one run's records in step order. Records with a non-finite loss or
    value, or a loss ``≤ 0``, are skipped. For each level ``L`` the first consecutive pair ``(i, i+1)``
    with ``loss_i == L`` or ``loss_i ≥ L ≥ loss_{i+1}`` is used, and the value is linear in
    ``log(loss)`` between them::

        v(L) = v_i + (v_{i+1} - v_i) · (log loss_i − log L) / (log loss_i − log loss_{i+1})

    A level above the first loss, or never reached, gives NaN.
    """
    records = _valid_records(losses, values)
    return [_at_level(records, _as_float(level)) for level in levels]


def common_loss_levels(runs_losses: Sequence[Sequence[float]], num: int = 5) -> list[float]:
    """``num`` log-spaced loss levels, descending, that every run reaches.

    With ``lo = max_r min_t loss_{r,t}`` (the lowest loss all runs reach) and
    ``hi = min_r loss_{r,0}`` (the smallest initial loss), the levels are ``geomspace(hi, lo, num)``;
    only finite positive losses count. An empty range (``lo > hi``, or a run with no usable loss)
    gives ``[]``.
    """
    if num < 1 or not runs_losses:
        return []
    lows, highs = [], []
    for losses in runs_losses:
        usable = [x for x in map(_as_float, losses) if math.isfinite(x) and x > 0]
        if not usable:
            return []
        lows.append(min(usable))
        highs.append(usable[0])
    lo, hi = max(lows), min(highs)
    if lo > hi:
        return []
    if lo == hi:
        return [hi]
    return [float(x) for x in np.geomspace(hi, lo, num)]


def binomial_stderr(p: float, n: int) -> float:
    """Standard error of a proportion ``p`` measured on ``n`` trials: ``sqrt(p(1 − p)/n)`` (NaN if ``n ≤ 0``)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    if n <= 0:
        return math.nan
    return math.sqrt(p * (1.0 - p) / n)


def seed_stats(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample standard deviation (``ddof=1``) and count of the finite values.

    Returns ``{"mean", "std", "n", "values"}``: non-finite values are ignored, ``n`` counts the
    finite ones, ``std`` is NaN with fewer than two and ``mean`` NaN with none; ``values`` are the
    inputs as floats.
    """
    all_values = [_as_float(v) for v in values]
    finite = np.array([v for v in all_values if math.isfinite(v)], dtype=float)
    n = int(finite.size)
    mean = float(finite.mean()) if n else math.nan
    std = float(finite.std(ddof=1)) if n >= 2 else math.nan
    return {"mean": mean, "std": std, "n": n, "values": all_values}


def _mde(sa: Mapping[str, Any], sb: Mapping[str, Any], estimator_se: float, level: float) -> float:
    """The minimum detectable effect at the arms' seeds and observed noise (NaN when it cannot be computed)."""
    sd_a, sd_b = sa["std"], sb["std"]
    if sa["n"] < 2 or sb["n"] < 2 or not (math.isfinite(sd_a) and math.isfinite(sd_b)):
        return math.nan
    if sd_a == 0 and sd_b == 0 and estimator_se == 0:
        return math.nan
    return statistics.minimum_detectable_effect(n_a=sa["n"], n_b=sb["n"], sd_a=sd_a, sd_b=sd_b,
                                                estimator_se=estimator_se, level=level)


def compare_seeds(a: Sequence[float], b: Sequence[float], *, lower_is_better: bool, estimator_se_a: float = 0.0,
                  estimator_se_b: float = 0.0, level: float = statistics.LEVEL,
                  effect_of_interest: float | None = None) -> dict[str, Any]:
    """Whether arm ``a`` beats arm ``b``: Welch's interval of ``mean_a − mean_b`` over seeds
    (:func:`~sharpscope.experiments.statistics.welch_difference`, with each arm's estimator standard error
    that its seeds do not vary), judged by :func:`~sharpscope.experiments.verdicts.judge_difference`.

    Returns ``{"a", "b"}`` (:func:`seed_stats`), ``"difference" = mean_a − mean_b``, ``"interval"``
    (``level``, two-sided), ``"se"``, ``"df"``, ``"p_value"``, ``"mde"`` (the minimum detectable effect at these
    seeds and the observed noise, 80% power), ``"a_better"`` (the direction of the estimate alone),
    ``"verdict"`` and ``"reason"`` (:data:`VERDICTS`), and ``"holds"`` (the verdict is "holds": the interval
    lies on the better side of 0). Fewer than three finite seeds in an arm: inconclusive.
    """
    d = statistics.welch_difference(a, b, level=level, estimator_se_a=estimator_se_a, estimator_se_b=estimator_se_b)
    sa, sb = seed_stats(a), seed_stats(b)
    e = math.hypot(estimator_se_a, estimator_se_b)
    mde = _mde(sa, sb, e, level)
    verdict = verdicts.judge_difference(d, better="lower" if lower_is_better else "higher", mde=mde,
                                        effect_of_interest=effect_of_interest)
    a_better = bool(d.estimate < 0) if lower_is_better else bool(d.estimate > 0)
    return {"a": sa, "b": sb, "difference": d.estimate, "interval": [d.low, d.high], "level": level, "se": d.se,
            "df": d.df, "p_value": d.p_value, "estimator_se": e, "mde": mde, "a_better": a_better,
            "verdict": verdict.label, "reason": verdict.reason, "holds": verdict.passes}


def _row_pearson(rx: np.ndarray, ry: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row of ``rx`` with the same row of ``ry``, clipped to ``[-1, 1]``."""
    dx = rx - rx.mean(axis=-1, keepdims=True)
    dy = ry - ry.mean(axis=-1, keepdims=True)
    num = (dx * dy).sum(axis=-1)
    den = np.sqrt((dx * dx).sum(axis=-1) * (dy * dy).sum(axis=-1))
    return np.clip(num / den, -1.0, 1.0)


def spearman_with_ci(x: Sequence[float], y: Sequence[float], *, resamples: int = 2000, level: float = 0.95,
                     seed: int = 0) -> dict[str, Any]:
    """Spearman rank correlation with a percentile bootstrap confidence interval.

    Only pairs with both values finite are used (``n`` of them). ``rho`` is the Pearson correlation
    of the average ranks. The interval resamples the ``n`` pairs with replacement
    (``numpy.random.default_rng(seed)``), skips resamples in which either side is constant, and
    takes the ``(1 − level)/2`` and ``(1 + level)/2`` quantiles of the resampled ``rho``.
    Returns ``{"rho", "ci": [lo, hi], "n", "resamples_used"}``; with ``n < 3`` (or a constant side)
    ``rho`` and the interval are NaN.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length: {len(x)} != {len(y)}")
    xs = np.array([_as_float(v) for v in x], dtype=float)
    ys = np.array([_as_float(v) for v in y], dtype=float)
    keep = np.isfinite(xs) & np.isfinite(ys)
    xs, ys = xs[keep], ys[keep]
    n = int(xs.size)
    nan_result = {"rho": math.nan, "ci": [math.nan, math.nan], "n": n, "resamples_used": 0}
    if n < 3 or np.all(xs == xs[0]) or np.all(ys == ys[0]):
        return nan_result
    from scipy.stats import rankdata  # scipy.stats takes ~1 s to import: only when a claim is checked

    rho = float(_row_pearson(rankdata(xs), rankdata(ys)))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(max(int(resamples), 0), n))
    bx, by = xs[idx], ys[idx]
    varied = (bx != bx[:, :1]).any(axis=1) & (by != by[:, :1]).any(axis=1)
    bx, by = bx[varied], by[varied]
    used = int(bx.shape[0])
    if used == 0:
        return {**nan_result, "rho": rho}
    rhos = _row_pearson(rankdata(bx, axis=1), rankdata(by, axis=1))
    lo, hi = np.quantile(rhos, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return {"rho": rho, "ci": [float(lo), float(hi)], "n": n, "resamples_used": used}
