"""Statistics for comparing arms of a study: intervals of a difference, its power and its minimum detectable effect.

Pure functions on plain numbers (numpy and ``scipy.stats``). Each comparison returns a
:class:`Difference` of arm ``a`` minus arm ``b`` with a two-sided ``level`` interval; a directional claim
("a lower than b") is decided by that interval lying entirely on one side of 0, a one-sided test at
``(1 − level)/2``.

* :func:`welch_difference` — difference of arm means over seeds, Welch's interval
  ``d ± t_{(1+level)/2, ν} · √V`` with ``V = s_a²/n_a + s_b²/n_b + e²``, where ``e² = e_a² + e_b²`` is
  the variance that the seeds do not vary (the trace estimator with probes shared across seeds, one shared
  test set) and ``ν`` the Welch–Satterthwaite degrees of freedom ``V² / Σ (s_x²/n_x)²/(n_x − 1)`` (a known
  variance ``e²`` adds no term). :func:`welch_intervals` is the same, vectorised over replicate rows.
* :func:`paired_difference` — the mean of paired differences ``d_i = a_i − b_i`` (arms run from the same
  starting points, e.g. bad minimizers) with the one-sample interval ``d̄ ± t_{(1+level)/2, ν} · √(s_d²/n + e²)``:
  Welch's interval with a second arm of zero variance, so ``ν = n − 1`` without ``e`` (the paired t interval).
* :func:`permutation_difference` — the exact (or sampled) permutation test of the same difference.
* :func:`hierarchical_bootstrap` — seeds resampled, then probe draws within each resampled seed.
* :func:`paired_accuracy` — two classifiers on one test set, example by example: the accuracy difference
  ``(n_10 − n_01)/n`` with its paired standard error ``√(n_10 + n_01 − (n_10 − n_01)²/n)/n`` and McNemar's
  exact test.
* :func:`compare_readings` — two single readings with their estimator standard errors (Hutchinson/Hutch++
  stderr) and deterministic error bounds (a Lanczos residual ``‖r‖`` bounds ``|θ − λ|``).
* :func:`welch_power` and :func:`minimum_detectable_effect` — the power of the Welch decision and the
  smallest true difference it detects with a given power, computed before a study runs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from sharpscope.errors import ConfigError
from sharpscope.validation import check_int, check_real, check_seed

__all__ = ["Difference", "compare_readings", "hierarchical_bootstrap", "minimum_detectable_effect",
           "paired_accuracy", "paired_difference", "permutation_difference", "welch_difference", "welch_intervals", "welch_power"]

LEVEL = 0.95
"""The default two-sided interval level (a directional decision is then a one-sided test at 2.5%)."""


@dataclass(frozen=True)
class Difference:
    """``a − b`` with its two-sided ``level`` interval ``[low, high]``, standard error, degrees of freedom
    (``inf`` for a normal interval) and two-sided p-value; NaN where undefined (too few values, no
    variance). ``method`` says how it was computed."""

    estimate: float
    low: float
    high: float
    se: float
    df: float
    p_value: float
    level: float
    method: str
    n_a: int
    n_b: int

    @property
    def defined(self) -> bool:
        """Whether the interval exists (finite ends)."""
        return math.isfinite(self.low) and math.isfinite(self.high)

    def side(self) -> int:
        """``+1`` if the interval lies above 0, ``−1`` below, ``0`` if it contains 0 or is undefined."""
        if not self.defined:
            return 0
        return 1 if self.low > 0 else -1 if self.high < 0 else 0

    def to_json(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict."""
        return asdict(self)


def _level(level: Any) -> float:
    return check_real("level", level, low=0.0, high=1.0, low_open=True, high_open=True)


def _finite(values: Any, name: str) -> np.ndarray:
    """The finite entries of a 1-D sequence of numbers, as float64."""
    try:
        arr = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a sequence of numbers", argument=name) from None
    if arr.ndim != 1:
        raise ConfigError(f"{name} must be one-dimensional, got shape {arr.shape}", argument=name)
    return arr[np.isfinite(arr)]


def _t_quantile(q: float, df: np.ndarray) -> np.ndarray:
    """Student's t quantile, normal where ``df`` is infinite."""
    from scipy import stats

    df = np.asarray(df, dtype=float)
    out = np.full(df.shape, float(stats.norm.ppf(q)))
    finite = np.isfinite(df) & (df > 0)
    out[finite] = stats.t.ppf(q, df[finite])
    out[~np.isfinite(df) & ~(df > 0)] = math.nan
    return out


def _welch_df(var_a: np.ndarray, n_a: int, var_b: np.ndarray, n_b: int, e2: float) -> np.ndarray:
    """Welch–Satterthwaite degrees of freedom of ``var_a/n_a + var_b/n_b + e2`` (``e2`` known: no term)."""
    va, vb = var_a / n_a, var_b / n_b
    total = va + vb + e2
    denom = va**2 / (n_a - 1) + vb**2 / (n_b - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom > 0, total**2 / np.where(denom > 0, denom, 1.0), np.where(total > 0, np.inf, np.nan))


def welch_intervals(a: np.ndarray, b: np.ndarray, *, level: float = LEVEL, estimator_se: float = 0.0) -> dict[str, np.ndarray]:
    """:func:`welch_difference` for each row of ``a`` (``R × n_a``) against the same row of ``b`` (``R × n_b``):
    arrays ``estimate``, ``se``, ``df``, ``low``, ``high``, ``p_value`` of length ``R``. ``estimator_se`` is
    ``e = √(e_a² + e_b²)``, the standard error of the difference that the seeds do not vary."""
    from scipy import stats

    level = _level(level)
    e = check_real("estimator_se", estimator_se, low=0.0)
    a, b = np.atleast_2d(np.asarray(a, dtype=float)), np.atleast_2d(np.asarray(b, dtype=float))
    if a.shape[0] != b.shape[0]:
        raise ConfigError(f"a and b must have as many rows, got {a.shape[0]} and {b.shape[0]}", argument="b")
    n_a, n_b = a.shape[1], b.shape[1]
    if n_a < 2 or n_b < 2:
        nan = np.full(a.shape[0], math.nan)
        est = (a.mean(axis=1) - b.mean(axis=1)) if n_a and n_b else nan
        return {"estimate": est, "se": nan, "df": nan, "low": nan, "high": nan, "p_value": nan}
    var_a, var_b = a.var(axis=1, ddof=1), b.var(axis=1, ddof=1)
    est = a.mean(axis=1) - b.mean(axis=1)
    se = np.sqrt(var_a / n_a + var_b / n_b + e * e)
    df = _welch_df(var_a, n_a, var_b, n_b, e * e)
    half = _t_quantile(0.5 + level / 2, df) * se
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(se > 0, est / np.where(se > 0, se, 1.0), np.nan)
    p = np.full(t.shape, math.nan)
    fin = np.isfinite(t) & np.isfinite(df)
    p[fin] = 2 * stats.t.sf(np.abs(t[fin]), df[fin])
    inf = np.isfinite(t) & np.isinf(df)
    p[inf] = 2 * stats.norm.sf(np.abs(t[inf]))
    undefined = ~(se > 0)
    low, high = np.where(undefined, np.nan, est - half), np.where(undefined, np.nan, est + half)
    return {"estimate": est, "se": se, "df": df, "low": low, "high": high, "p_value": p}


def welch_difference(a: Sequence[float], b: Sequence[float], *, level: float = LEVEL, estimator_se_a: float = 0.0,
                     estimator_se_b: float = 0.0) -> Difference:
    """Mean of ``a`` minus mean of ``b`` (finite values only) with Welch's ``level`` interval (see the module
    docstring). ``estimator_se_a``/``_b``: each arm mean's standard error that its seeds do not vary (with
    probes shared across seeds, one reading's estimator stderr; not divided by the seed count). The two are
    added as independent, which overstates the noise when the errors of the two arms are positively
    correlated (common probes). Fewer than two values in an arm, or no variance at all: NaN interval.

    >>> d = welch_difference([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    >>> d.estimate, round(d.df, 6), round(d.high, 4)
    (-3.0, 4.0, -0.733)
    """
    ea = check_real("estimator_se_a", estimator_se_a, low=0.0)
    eb = check_real("estimator_se_b", estimator_se_b, low=0.0)
    xa, xb = _finite(a, "a"), _finite(b, "b")
    r = welch_intervals(xa[None, :], xb[None, :], level=level, estimator_se=math.hypot(ea, eb))
    est = float(r["estimate"][0]) if xa.size and xb.size else math.nan
    return Difference(estimate=est, low=float(r["low"][0]), high=float(r["high"][0]), se=float(r["se"][0]),
                      df=float(r["df"][0]), p_value=float(r["p_value"][0]), level=float(level),
                      method="welch" + (" + estimator stderr" if ea or eb else ""), n_a=int(xa.size), n_b=int(xb.size))


def paired_difference(differences: Sequence[float], *, level: float = LEVEL, estimator_se: float = 0.0) -> Difference:
    """The mean of paired differences ``d_i = a_i − b_i`` (finite values only) with the interval
    ``d̄ ± t_{(1+level)/2, ν} · √(s_d²/n + e²)``, ``e = estimator_se`` the standard error of ``d̄`` that the pairs do
    not vary (readings with shared probes, one shared test set). It is :func:`welch_intervals` against a second
    arm of zero variance: ``ν = (s_d²/n + e²)² (n − 1)/(s_d²/n)²``, which is ``n − 1`` (the paired t interval)
    when ``e = 0``. Fewer than two differences, or none varying and no ``e``: NaN interval.

    >>> d = paired_difference([1.0, 2.0, 3.0])
    >>> d.estimate, d.df, round(d.low, 4)
    (2.0, 2.0, -0.4841)
    """
    e = check_real("estimator_se", estimator_se, low=0.0)
    xd = _finite(differences, "differences")
    n = int(xd.size)
    if n < 2:
        est = float(xd.mean()) if n else math.nan
        return Difference(estimate=est, low=math.nan, high=math.nan, se=math.nan, df=math.nan, p_value=math.nan,
                          level=float(_level(level)), method="paired", n_a=n, n_b=n)
    r = welch_intervals(xd[None, :], np.zeros((1, n)), level=level, estimator_se=e)
    return Difference(estimate=float(r["estimate"][0]), low=float(r["low"][0]), high=float(r["high"][0]),
                      se=float(r["se"][0]), df=float(r["df"][0]), p_value=float(r["p_value"][0]), level=float(level),
                      method="paired" + (" + estimator stderr" if e else ""), n_a=n, n_b=n)


def permutation_difference(a: Sequence[float], b: Sequence[float], *, resamples: int = 9999, seed: int = 0) -> Difference:
    """The permutation test of ``mean(a) − mean(b)``: the two-sided p-value is twice the smaller share of
    relabellings of the pooled values whose difference is at least (at most) the observed one (all
    relabellings when there are at most ``resamples``, else ``resamples`` drawn with ``seed``). No interval
    (NaN ends). With 3 seeds an arm there are ``C(6, 3) = 20`` relabellings, so the smallest two-sided
    p-value is ``2/20 = 0.1``: three seeds cannot reach 5% this way."""
    from scipy import stats

    resamples = check_int("resamples", resamples, low=1)
    check_seed("seed", seed)
    xa, xb = _finite(a, "a"), _finite(b, "b")
    est = float(xa.mean() - xb.mean()) if xa.size and xb.size else math.nan
    p = math.nan
    if xa.size and xb.size and np.ptp(np.concatenate([xa, xb])) > 0:
        res = stats.permutation_test((xa, xb), lambda x, y, axis: np.mean(x, axis=axis) - np.mean(y, axis=axis),
                                     permutation_type="independent", vectorized=True, n_resamples=resamples,
                                     alternative="two-sided", rng=np.random.default_rng(seed))
        p = float(res.pvalue)
    return Difference(estimate=est, low=math.nan, high=math.nan, se=math.nan, df=math.nan, p_value=p, level=math.nan,
                      method="permutation", n_a=int(xa.size), n_b=int(xb.size))


def _two_level(values: Any, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 2 or arr.shape[0] < 2 or arr.shape[1] < 1 or not np.all(np.isfinite(arr)):
        raise ConfigError(f"{name} must be a finite seeds × draws array with at least 2 seeds, got shape "
                          f"{arr.shape}", argument=name)
    return arr


def hierarchical_bootstrap(a: Any, b: Any | None = None, *, resamples: int = 2000, level: float = LEVEL,
                           seed: int = 0) -> Difference:
    """Percentile bootstrap over seeds × probe draws: ``a`` (and ``b``) are ``seeds × draws`` arrays; each
    resample draws seeds with replacement, then draws within each drawn seed with replacement, and takes the
    grand mean. With ``b``: the interval of ``mean(a) − mean(b)`` (arms resampled independently); without:
    of ``mean(a)``. ``se`` is the standard deviation of the resampled statistic; ``p_value`` twice the
    smaller tail share beyond 0. Given the data, the resampled grand mean of one arm has variance
    ``[Σ_i (m_i − m̄)²/S + Σ_i σ_i²/(S·D)]/S`` (``m_i``, ``σ_i²``: seed ``i``'s mean and population variance
    over its ``D`` draws)."""
    level = _level(level)
    resamples = check_int("resamples", resamples, low=10)
    rng = np.random.default_rng(check_seed("seed", seed))

    def grand_means(x: np.ndarray) -> np.ndarray:
        s, d = x.shape
        pick = rng.integers(0, s, size=(resamples, s))
        within = rng.integers(0, d, size=(resamples, s, d))
        return x[pick[:, :, None], within].mean(axis=(1, 2))

    xa = _two_level(a, "a")
    stat = grand_means(xa)
    est = float(xa.mean())
    n_b = 0
    if b is not None:
        xb = _two_level(b, "b")
        stat = stat - grand_means(xb)
        est -= float(xb.mean())
        n_b = xb.shape[0]
    low, high = np.quantile(stat, [(1 - level) / 2, (1 + level) / 2])
    p = min(1.0, 2 * min(float(np.mean(stat <= 0)), float(np.mean(stat >= 0))))
    return Difference(estimate=est, low=float(low), high=float(high), se=float(stat.std(ddof=1)), df=math.nan,
                      p_value=p, level=level, method="hierarchical bootstrap", n_a=xa.shape[0], n_b=n_b)


def _correct(values: Any, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1 or arr.size == 0 or not np.all((arr == 0) | (arr == 1)):
        raise ConfigError(f"{name} must be a non-empty 1-D array of 0/1 (per-example correctness)", argument=name)
    return arr.astype(bool)


def paired_accuracy(correct_a: Any, correct_b: Any, *, level: float = LEVEL) -> Difference:
    """Accuracy of ``a`` minus accuracy of ``b`` on the same ``n`` test examples, example by example.

    With ``n_10`` examples only ``a`` gets right and ``n_01`` only ``b``: the difference is
    ``(n_10 − n_01)/n``, its standard error ``√(n_10 + n_01 − (n_10 − n_01)²/n)/n`` (normal interval), and
    the p-value McNemar's exact test (``n_10`` against Binomial(``n_10 + n_01``, ½)). Examples both get right
    or both get wrong carry no information about the difference, which is why pairing beats comparing two
    binomial accuracies.

    >>> d = paired_accuracy([1, 1, 0, 0, 1], [1, 0, 0, 1, 0])
    >>> round(d.estimate, 12), round(d.se, 6), d.p_value
    (0.2, 0.334664, 1.0)
    """
    from scipy import stats

    level = _level(level)
    ca, cb = _correct(correct_a, "correct_a"), _correct(correct_b, "correct_b")
    if ca.size != cb.size:
        raise ConfigError(f"correct_a and correct_b must cover the same examples, got {ca.size} and {cb.size}",
                          argument="correct_b")
    n = int(ca.size)
    n10, n01 = int(np.sum(ca & ~cb)), int(np.sum(~ca & cb))
    est = (n10 - n01) / n
    se = math.sqrt(max(n10 + n01 - (n10 - n01) ** 2 / n, 0.0)) / n
    z = float(stats.norm.ppf(0.5 + level / 2))
    p = float(stats.binomtest(n10, n10 + n01, 0.5).pvalue) if n10 + n01 else 1.0
    return Difference(estimate=est, low=est - z * se, high=est + z * se, se=se, df=math.inf, p_value=p, level=level,
                      method="paired (McNemar)", n_a=n, n_b=n)


def compare_readings(x_a: float, x_b: float, *, se_a: float = 0.0, se_b: float = 0.0, bound_a: float = 0.0,
                     bound_b: float = 0.0, level: float = LEVEL) -> Difference:
    """Two single readings: ``x_a − x_b ± (z·√(se_a² + se_b²) + bound_a + bound_b)``. ``se_*`` are estimator
    standard errors (a Hutchinson or Hutch++ stderr; independent probes), ``bound_*`` deterministic error
    bounds (a Ritz value ``θ`` with residual ``‖r‖`` has an eigenvalue in ``[θ − ‖r‖, θ + ‖r‖]``), added
    linearly. ``p_value`` is from the random part alone (NaN when there is none).

    >>> d = compare_readings(10.0, 7.0, se_a=0.3, se_b=0.4, bound_a=0.5)
    >>> round(d.se, 12), round(d.low, 4), round(d.high, 4)
    (0.5, 1.52, 4.48)
    """
    from scipy import stats

    level = _level(level)
    xa, xb = check_real("x_a", x_a), check_real("x_b", x_b)
    se = math.hypot(check_real("se_a", se_a, low=0.0), check_real("se_b", se_b, low=0.0))
    bound = check_real("bound_a", bound_a, low=0.0) + check_real("bound_b", bound_b, low=0.0)
    half = float(stats.norm.ppf(0.5 + level / 2)) * se + bound
    est = xa - xb
    p = float(2 * stats.norm.sf(abs(est) / se)) if se > 0 else math.nan
    return Difference(estimate=est, low=est - half, high=est + half, se=se, df=math.inf, p_value=p, level=level,
                      method="readings", n_a=1, n_b=1)


_NODES = 64  # Gauss–Legendre nodes per chi-square variable in welch_power


def welch_power(effect: float, *, n_a: int, n_b: int, sd_a: float, sd_b: float | None = None,
                estimator_se: float = 0.0, level: float = LEVEL) -> float:
    """Probability that :func:`welch_difference`'s ``level`` interval lies entirely on the side of ``effect``
    (above 0 for ``effect ≥ 0``) when arm ``x`` has ``n_x`` normal seeds of standard deviation ``sd_x`` and the
    true difference is ``effect``; ``estimator_se`` as in :func:`welch_intervals`. At ``effect = 0`` this is
    the false-positive rate of one direction (``≈ (1 − level)/2``).

    Exact for that model up to quadrature: the difference ``D ~ N(effect, τ²)``, ``τ² = sd_a²/n_a + sd_b²/n_b
    + e²``, is independent of the sample variances ``s_x² ~ sd_x² χ²_{n_x−1}/(n_x − 1)``, so the power is
    ``E_s[Φ((|effect| − t_ν(s)·√V(s))/τ)]``, integrated over the two variances by Gauss–Legendre in their
    quantiles."""
    from scipy import stats

    effect = abs(check_real("effect", effect))
    n_a, n_b = check_int("n_a", n_a, low=2), check_int("n_b", n_b, low=2)
    sa = check_real("sd_a", sd_a, low=0.0)
    sb = sa if sd_b is None else check_real("sd_b", sd_b, low=0.0)
    e = check_real("estimator_se", estimator_se, low=0.0)
    level = _level(level)
    tau = math.sqrt(sa * sa / n_a + sb * sb / n_b + e * e)
    if tau == 0:
        raise ConfigError("welch_power needs some noise: sd_a, sd_b and estimator_se are all 0", argument="sd_a")
    x, w = np.polynomial.legendre.leggauss(_NODES)
    u, w = (x + 1) / 2, w / 2
    qa = stats.chi2.ppf(u, n_a - 1) / (n_a - 1)
    qb = stats.chi2.ppf(u, n_b - 1) / (n_b - 1)
    var_a, var_b = (sa * sa * qa)[:, None], (sb * sb * qb)[None, :]
    v = var_a / n_a + var_b / n_b + e * e
    df = _welch_df(var_a, n_a, var_b, n_b, e * e)
    t = _t_quantile(0.5 + level / 2, np.broadcast_to(df, v.shape).copy())
    p = stats.norm.cdf((effect - t * np.sqrt(v)) / tau)
    return float(np.clip(w @ p @ w, 0.0, 1.0))


def minimum_detectable_effect(*, n_a: int, n_b: int, sd_a: float, sd_b: float | None = None,
                              estimator_se: float = 0.0, power: float = 0.8, level: float = LEVEL) -> float:
    """The smallest true difference that :func:`welch_difference` puts beyond 0 (on its side) with probability
    ``power`` (:func:`welch_power`), in the units of the data: what a criterion can detect at its seeds and
    noise, computable before the study runs. E.g. 3 seeds an arm, sd 1, no estimator noise, 95% intervals,
    80% power: about 3.5 (Welch's interval is wide with 2 degrees of freedom an arm).

    >>> round(minimum_detectable_effect(n_a=10, n_b=10, sd_a=1.0), 2)
    1.33
    """
    from scipy.optimize import brentq

    power = check_real("power", power, low=0.0, high=1.0, low_open=True, high_open=True)

    def at(effect: float) -> float:
        return welch_power(effect, n_a=n_a, n_b=n_b, sd_a=sd_a, sd_b=sd_b, estimator_se=estimator_se, level=level)

    if at(0.0) >= power:
        raise ConfigError(f"power must exceed the false-positive rate {at(0.0):.3g}, got {power}", argument="power")
    sb = sd_a if sd_b is None else sd_b
    hi = math.sqrt(sd_a**2 + sb**2 + estimator_se**2)  # positive: welch_power checked the arguments
    while at(hi) < power:
        hi *= 2
    return float(brentq(lambda d: at(d) - power, 0.0, hi, xtol=1e-6 * hi))
