"""Series read along a run's records: rolling medians, the steps holding both a measurement and a
mini-batch SAM record, values at training-loss levels, and the rank correlation of two series."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from itertools import pairwise
from typing import Any

import numpy as np

from sharpscope.io.jsonsafe import as_number
from sharpscope.io.records import SAM_BATCH, RunRecord, is_measurement, record_kind, record_step

ROLLING_WINDOW = 10  # checkpoints in the rolling median of the mini-batch edge ratios


def rolling_median(values: Sequence[float], window: int) -> list[float]:
    """The median of each value with the ``window − 1`` before it (fewer at the start)."""
    return [statistics.median(values[max(0, i - window + 1): i + 1]) for i in range(len(values))]


def sam_batch_pairs(records: Iterable[RunRecord | Mapping[str, Any]]) -> list[tuple[int, Any, Any]]:
    """``(step, measurement, "sam_batch" record)`` for every step holding both, in step order (typed or stored,
    as given)."""
    full, batch = {}, {}
    for r in records:
        if is_measurement(r):
            full[record_step(r)] = r
        elif record_kind(r) == SAM_BATCH:
            batch[record_step(r)] = r
    return [(t, full[t], batch[t]) for t in sorted(set(full) & set(batch))]


def _valid_records(losses: Sequence[float], values: Sequence[float]) -> list[tuple[float, float]]:
    """The ``(loss, value)`` pairs in order, without non-finite pairs and non-positive losses."""
    if len(losses) != len(values):
        raise ValueError(f"losses and values differ in length: {len(losses)} != {len(values)}")
    out = []
    for loss, value in zip(losses, values, strict=True):
        lf, vf = as_number(loss), as_number(value)
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
    return [_at_level(records, as_number(level)) for level in levels]


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
        usable = [x for x in map(as_number, losses) if math.isfinite(x) and x > 0]
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
    xs = np.array([as_number(v) for v in x], dtype=float)
    ys = np.array([as_number(v) for v in y], dtype=float)
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
