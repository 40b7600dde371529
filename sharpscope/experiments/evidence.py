"""Evidence helpers: comparing runs at equal training loss and judging differences against seed noise.

Pure functions on plain numbers (numpy/scipy only), so that claims drawn from several runs are
stated the same way everywhere:

* :func:`interpolate_at_loss` reads a quantity along one run at the first time its training loss
  falls to given levels; :func:`common_loss_levels` picks levels that every run reaches.
* :func:`seed_stats` and :func:`compare_seeds` summarise per-seed values and decide whether one arm
  beats another (a :class:`Comparison`): Welch's interval of the difference (with the estimator's own
  standard error) and a verdict from :mod:`sharpscope.experiments.verdicts`.
* :func:`binomial_stderr` is the standard error of an accuracy measured on ``n`` examples.
* :func:`spearman_with_ci` is a Spearman rank correlation with a percentile bootstrap interval.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sharpscope.experiments import statistics, verdicts
from sharpscope.io.jsonsafe import as_number
from sharpscope.io.series import common_loss_levels, interpolate_at_loss, spearman_with_ci

__all__ = ["VERDICTS", "Comparison", "binomial_stderr", "common_loss_levels", "compare_seeds", "interpolate_at_loss",
           "SeedStats", "seed_stats", "spearman_with_ci"]

VERDICTS = verdicts.VERDICTS  # the labels, defined in sharpscope.experiments.verdicts
MIN_SEEDS = verdicts.MIN_SEEDS


def binomial_stderr(p: float, n: int) -> float:
    """Standard error of a proportion ``p`` measured on ``n`` trials: ``sqrt(p(1 − p)/n)`` (NaN if ``n ≤ 0``)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    if n <= 0:
        return math.nan
    return math.sqrt(p * (1.0 - p) / n)


@dataclass(frozen=True)
class SeedStats:
    """Per-seed ``values`` (floats, NaN where missing) with the ``mean``, the sample standard deviation ``std``
    (``ddof=1``) and the count ``n`` of the finite ones. Stored as :meth:`to_dict`."""

    mean: float
    std: float
    n: int
    values: list[float]

    def to_dict(self) -> dict[str, Any]:
        """``{"mean", "std", "n", "values"}``."""
        return {"mean": self.mean, "std": self.std, "n": self.n, "values": self.values}

    @classmethod
    def from_dict(cls, stored: Mapping[str, Any]) -> SeedStats:
        """The statistics stored by :meth:`to_dict` (non-numbers read as NaN; missing: no seeds)."""
        return cls(as_number(stored.get("mean")), as_number(stored.get("std")), int(stored.get("n", 0)),
                   [as_number(v) for v in stored.get("values", [])])


def seed_stats(values: Sequence[float]) -> SeedStats:
    """:class:`SeedStats` of ``values``: non-finite values are ignored by ``mean``, ``std`` and ``n``; ``std``
    is NaN with fewer than two finite values and ``mean`` NaN with none."""
    all_values = [as_number(v) for v in values]
    finite = np.array([v for v in all_values if math.isfinite(v)], dtype=float)
    n = int(finite.size)
    return SeedStats(float(finite.mean()) if n else math.nan, float(finite.std(ddof=1)) if n >= 2 else math.nan, n,
                     all_values)


def _mde(sa: SeedStats, sb: SeedStats, estimator_se: float, level: float) -> float:
    """The minimum detectable effect at the arms' seeds and observed noise (NaN when it cannot be computed)."""
    if sa.n < 2 or sb.n < 2 or not (math.isfinite(sa.std) and math.isfinite(sb.std)):
        return math.nan
    if sa.std == 0 and sb.std == 0 and estimator_se == 0:
        return math.nan
    return statistics.minimum_detectable_effect(n_a=sa.n, n_b=sb.n, sd_a=sa.std, sd_b=sb.std,
                                                estimator_se=estimator_se, level=level)


@dataclass(frozen=True)
class Comparison:
    """Arm ``a`` against arm ``b`` over seeds (:func:`compare_seeds`): each arm's :func:`seed_stats`, Welch's
    ``difference`` of the means, the estimator standard error ``estimator_se`` that the seeds do not vary, the
    minimum detectable effect ``mde`` (NaN where it cannot be computed), whether the estimate alone favours
    ``a``, and the ``verdict`` (with ``mde`` where finite); ``binomial_stderr``: the test-set error added to an
    accuracy comparison (NaN for any other). Stored as :meth:`to_dict`."""

    a: SeedStats
    b: SeedStats
    difference: statistics.Difference
    estimator_se: float
    mde: float
    a_better: bool
    verdict: verdicts.Verdict
    binomial_stderr: float = math.nan

    def to_dict(self) -> dict[str, Any]:
        """``{"a", "b", "difference", "interval", "level", "se", "df", "p_value", "estimator_se", "mde",
        "a_better", "verdict", "reason", "holds"}`` and, for accuracy, ``"binomial_stderr"`` and
        ``"paired": False`` (the arms' per-example predictions are not stored)."""
        d, v = self.difference, self.verdict
        out = {"a": self.a.to_dict(), "b": self.b.to_dict(), "difference": d.estimate, "interval": [d.low, d.high],
               "level": d.level, "se": d.se, "df": d.df, "p_value": d.p_value, "estimator_se": self.estimator_se,
               "mde": self.mde, "a_better": self.a_better, "verdict": v.label, "reason": v.reason, "holds": v.passes}
        return out if math.isnan(self.binomial_stderr) else {**out, "binomial_stderr": self.binomial_stderr,
                                                              "paired": False}


def compare_seeds(a: Sequence[float], b: Sequence[float], *, lower_is_better: bool, estimator_se_a: float = 0.0,
                  estimator_se_b: float = 0.0, level: float = statistics.LEVEL,
                  effect_of_interest: float | None = None) -> Comparison:
    """Whether arm ``a`` beats arm ``b``: Welch's interval of ``mean_a − mean_b`` over seeds
    (:func:`~sharpscope.experiments.statistics.welch_difference`, ``level`` two-sided, with each arm's estimator
    standard error that its seeds do not vary), judged by :func:`~sharpscope.experiments.verdicts.judge_difference`
    (:data:`VERDICTS`; "holds": the interval lies on the better side of 0) with the minimum detectable effect at
    these seeds and the observed noise (80% power). Fewer than three finite seeds in an arm: inconclusive.
    """
    d = statistics.welch_difference(a, b, level=level, estimator_se_a=estimator_se_a, estimator_se_b=estimator_se_b)
    sa, sb = seed_stats(a), seed_stats(b)
    e = math.hypot(estimator_se_a, estimator_se_b)
    mde = _mde(sa, sb, e, level)
    verdict = verdicts.judge_difference(d, better="lower" if lower_is_better else "higher", mde=mde,
                                        effect_of_interest=effect_of_interest)
    a_better = bool(d.estimate < 0) if lower_is_better else bool(d.estimate > 0)
    return Comparison(sa, sb, d, e, mde, a_better,
                      verdicts.Verdict(verdict.label, verdict.reason, mde if math.isfinite(mde) else None))


