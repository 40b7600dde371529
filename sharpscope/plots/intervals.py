"""The intervals figures draw: binomial error bars on accuracies and 95% intervals of means over seeds.

* :func:`wilson_interval` — the Wilson score interval of an accuracy ``p`` counted on ``n`` test images,

      (p + z²/2n ± z·sqrt(p(1−p)/n + z²/4n²)) / (1 + z²/n),   z = 1.96 for 95%;

  it stays inside [0, 1] and does not collapse to a point at p = 0 or 1 as the normal interval does.
* :func:`seed_interval` — the mean over seeds with its two-sided 95% Student-t interval,
  ``mean ± t_{0.975, n−1} · s/√n`` (``s`` the sample standard deviation over the ``n`` finite seeds): the
  seed spread that the studies' Welch comparisons of arms are built from. One seed gives no interval (NaN).
* :func:`accuracy_errorbars` — an accuracy line with its Wilson bars (an ``ErrorbarContainer``, gid
  ``accuracy_errorbar``) and a percent axis that the bars fit into.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.container import ErrorbarContainer
from matplotlib.ticker import PercentFormatter
from scipy import stats

LEVEL = 0.95
ERRORBAR_GID = "accuracy_errorbar"


def wilson_interval(p: Any, n: int, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """``(low, high)`` of the Wilson score interval of accuracies ``p`` (array-like, NaN kept) on ``n`` trials."""
    if n <= 0:
        raise ValueError(f"the test-set size must be positive, got {n}")
    p = np.asarray(p, dtype=float)
    z = float(stats.norm.ppf(0.5 + level / 2))
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(np.clip(p * (1 - p), 0.0, None) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def seed_interval(rows: np.ndarray, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(mean, low, high)`` per column of ``rows`` (seeds × points, NaN for a missing reading): the mean of
    the finite seeds and its Student-t interval; NaN bounds where fewer than two seeds are finite."""
    rows = np.atleast_2d(np.asarray(rows, dtype=float))
    ok = np.isfinite(rows)
    n = ok.sum(0)
    mean = np.where(n > 0, np.where(ok, rows, 0.0).sum(0) / np.maximum(n, 1), np.nan)
    dev = np.where(ok, rows - mean, 0.0)
    sd = np.sqrt((dev**2).sum(0) / np.maximum(n - 1, 1))
    t = np.array([stats.t.ppf(0.5 + level / 2, k - 1) if k > 1 else math.nan for k in n])
    half = np.where(n > 1, t * sd / np.sqrt(np.maximum(n, 1)), np.nan)
    return mean, mean - half, mean + half


def accuracy_errorbars(ax: Axes, x: Any, acc: Any, n: int | None, *, gid: str = "test_acc", shift: float = 0.0,
                       **style: Any) -> None:
    """Accuracies ``acc`` against ``x`` (a line with gid ``gid`` and the ``style``'s label) with their 95% Wilson
    bars on ``n`` test images (none when ``n`` is unknown), the bars moved by ``shift`` along x so that several
    runs' bars at the same steps stand side by side; a percent axis that holds every bar and never passes 100%."""
    x, acc = np.asarray(x, dtype=float), np.asarray(acc, dtype=float)
    (line,) = ax.plot(x, acc, **style)
    line.set_gid(gid)
    if n:
        low, high = wilson_interval(np.clip(acc, 0.0, 1.0), n)
        container = ax.errorbar(x + shift, acc, yerr=np.vstack([acc - low, high - acc]), fmt="none", capsize=2.0,
                                elinewidth=0.8, color=line.get_color(), alpha=style.get("alpha", 0.9))
        for bars in container.lines[2]:
            bars.set_gid(ERRORBAR_GID)
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=None if np.ptp(ax.get_ylim()) > 0.05 else 1))
    low_lim, high_lim = ax.get_ylim()
    if high_lim > 1.0:
        ax.set_ylim(low_lim, 1.0 + 0.02 * (1.0 - low_lim))


def has_accuracy_errorbars(ax: Axes) -> bool:
    """Whether ``ax`` holds accuracy error bars drawn by :func:`accuracy_errorbars` (an error-bar container
    whose bars carry the gid :data:`ERRORBAR_GID`)."""
    return any(isinstance(c, ErrorbarContainer) and any(b.get_gid() == ERRORBAR_GID for b in c.lines[2])
               for c in ax.containers)
