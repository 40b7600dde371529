"""The statistics module on synthetic data with known answers.

Simulated rates are compared with their exact values within ``BOUND_SIGMAS`` binomial standard errors,
``|rate − p| ≤ 5·√(p(1 − p)/R) + 0.002`` (the 0.002 covers the quadrature of :func:`welch_power`): a normal
5-sigma excursion has probability below 6e-7 per check, and every simulation is seeded, so a check cannot
fail by chance from one run to the next.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy.stats import ttest_ind, ttest_rel

from sharpscope.errors import ConfigError
from sharpscope.experiments import statistics as st

BOUND_SIGMAS = 5.0


def _bound(p: float, reps: int) -> float:
    return BOUND_SIGMAS * math.sqrt(p * (1 - p) / reps) + 0.002


def _simulate(effect: float, n: int, reps: int, seed: int, sd_b: float = 1.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return st.welch_intervals(rng.normal(effect, 1.0, (reps, n)), rng.normal(0.0, sd_b, (reps, n)))


def test_welch_difference_is_scipys_welch_test() -> None:
    a, b = [3.1, 2.2, 4.0, 3.3, math.nan], [1.0, 1.9, 0.4, 2.5, 1.1, 0.7]
    d = st.welch_difference(a, b, level=0.9)
    ref = ttest_ind([3.1, 2.2, 4.0, 3.3], b, equal_var=False)
    ci = ref.confidence_interval(0.9)
    assert (d.n_a, d.n_b) == (4, 6) and d.estimate == pytest.approx(np.mean(a[:4]) - np.mean(b))
    assert (d.low, d.high) == pytest.approx((ci.low, ci.high), rel=1e-12)
    assert d.p_value == pytest.approx(ref.pvalue, rel=1e-12) and d.df == pytest.approx(ref.df, rel=1e-12)
    assert d.side() == 1 and d.to_json()["method"] == "welch"


def test_welch_with_too_few_values_or_no_variance_has_no_interval() -> None:
    one = st.welch_difference([1.0], [2.0, 3.0])
    assert one.estimate == -1.5 and not one.defined and one.side() == 0
    flat = st.welch_difference([1.0, 1.0, 1.0], [2.0, 2.0, 2.0])
    assert flat.estimate == -1.0 and not flat.defined
    known = st.welch_difference([1.0, 1.0, 1.0], [2.0, 2.0, 2.0], estimator_se_a=0.3, estimator_se_b=0.4)
    assert known.se == pytest.approx(0.5) and math.isinf(known.df) and known.defined  # all noise known: normal


@pytest.mark.parametrize("n", [3, 10])
def test_false_positive_rate_at_effect_zero(n: int) -> None:
    """Two arms with no difference: the interval lies below 0 as often as welch_power(0) says, which is at most
    the nominal 2.5% of one side; either side, at most 5%."""
    reps = 40_000
    r = _simulate(0.0, n, reps, seed=n)
    one_side = float(np.mean(r["high"] < 0))
    either = float(np.mean((r["high"] < 0) | (r["low"] > 0)))
    exact = st.welch_power(0.0, n_a=n, n_b=n, sd_a=1.0)
    assert exact <= 0.025 + 0.002
    assert abs(one_side - exact) <= _bound(exact, reps)
    assert either <= 0.05 + _bound(0.05, reps)
    assert abs(float(np.mean(r["p_value"] < 0.05)) - either) < 1e-12  # the p-value and the interval agree


@pytest.mark.parametrize("n", [3, 10])
@pytest.mark.parametrize("effect", [1.0, 2.0, 3.0])
def test_power_at_one_two_three_sd_matches_its_exact_value(n: int, effect: float) -> None:
    reps = 20_000
    r = _simulate(effect, n, reps, seed=100 * n + int(effect))
    rate = float(np.mean(r["low"] > 0))
    exact = st.welch_power(effect, n_a=n, n_b=n, sd_a=1.0)
    assert abs(rate - exact) <= _bound(exact, reps)


def test_power_with_unequal_spreads_and_estimator_error() -> None:
    """Arm b three times as noisy, and an estimator error shared by the seeds of each arm (probes shared across
    seeds): the exact power accounts for both."""
    reps, n, e = 20_000, 4, 0.5
    rng = np.random.default_rng(7)
    a = rng.normal(2.0, 1.0, (reps, n)) + rng.normal(0.0, e, (reps, 1))
    b = rng.normal(0.0, 3.0, (reps, n)) + rng.normal(0.0, e, (reps, 1))
    r = st.welch_intervals(a, b, estimator_se=math.hypot(e, e))
    exact = st.welch_power(2.0, n_a=n, n_b=n, sd_a=1.0, sd_b=3.0, estimator_se=math.hypot(e, e))
    assert abs(float(np.mean(r["low"] > 0)) - exact) <= _bound(exact, reps)


def test_estimator_error_left_out_inflates_false_positives() -> None:
    """Seeds that share their probes share the estimator's error: the seed spread does not see it. Left out, the
    one-sided false-positive rate is far above 2.5%; carried in, it is at most that."""
    reps, n, e = 40_000, 3, 1.0
    rng = np.random.default_rng(11)
    a = rng.normal(0.0, 0.3, (reps, n)) + rng.normal(0.0, e, (reps, 1))
    b = rng.normal(0.0, 0.3, (reps, n)) + rng.normal(0.0, e, (reps, 1))
    ignored = float(np.mean(st.welch_intervals(a, b)["high"] < 0))
    carried = float(np.mean(st.welch_intervals(a, b, estimator_se=math.hypot(e, e))["high"] < 0))
    assert ignored > 0.2
    assert carried <= 0.025 + _bound(0.025, reps)


def test_minimum_detectable_effect_has_the_requested_power() -> None:
    reps, n = 20_000, 5
    mde = st.minimum_detectable_effect(n_a=n, n_b=n, sd_a=1.0, power=0.8)
    assert st.welch_power(mde, n_a=n, n_b=n, sd_a=1.0) == pytest.approx(0.8, abs=1e-5)
    rate = float(np.mean(_simulate(mde, n, reps, seed=5)["low"] > 0))
    assert abs(rate - 0.8) <= _bound(0.8, reps)
    # More seeds detect less; estimator noise that seeds do not average needs more.
    assert st.minimum_detectable_effect(n_a=10, n_b=10, sd_a=1.0) < mde
    assert st.minimum_detectable_effect(n_a=n, n_b=n, sd_a=1.0, estimator_se=1.0) > mde
    # Large seeds: the normal formula (z_{0.975} + z_{0.8})·√(2/n).
    assert st.minimum_detectable_effect(n_a=400, n_b=400, sd_a=1.0) == pytest.approx(2.8016 * math.sqrt(2 / 400),
                                                                                       rel=2e-3)


def test_permutation_test_enumerates_every_relabelling() -> None:
    sep = st.permutation_difference([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    assert sep.estimate == -3.0 and sep.p_value == pytest.approx(0.1)  # 2 of C(6, 3) = 20 relabellings
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=4), rng.normal(0.8, 1.0, size=5)
    pooled, obs = np.concatenate([a, b]), a.mean() - b.mean()
    diffs = np.array([pooled[list(i)].mean() - np.delete(pooled, list(i)).mean()
                      for i in itertools.combinations(range(9), 4)])
    brute = min(1.0, 2 * min(np.mean(diffs >= obs - 1e-12), np.mean(diffs <= obs + 1e-12)))
    assert st.permutation_difference(a, b).p_value == pytest.approx(brute, rel=1e-12)


def test_hierarchical_bootstrap_variance_is_the_two_stage_formula() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 1)) * 2.0 + rng.normal(size=(4, 6))
    s, d = x.shape
    m = x.mean(axis=1)
    var = (np.sum((m - m.mean()) ** 2) / s + np.sum(x.var(axis=1)) / (s * d)) / s
    boot = st.hierarchical_bootstrap(x, resamples=8000, seed=1)
    # the variance of 8 000 resamples is within 5 of its relative standard errors (√(2/8000) ≈ 1.6%)
    assert boot.se**2 == pytest.approx(var, rel=5 * math.sqrt(2 / 8000))
    assert boot.estimate == pytest.approx(x.mean()) and boot.low < x.mean() < boot.high
    assert st.hierarchical_bootstrap(x, resamples=8000, seed=1) == boot
    y = x + 1.0
    diff = st.hierarchical_bootstrap(x, y, resamples=8000, seed=2)
    assert diff.estimate == pytest.approx(-1.0) and diff.se**2 == pytest.approx(2 * var, rel=0.15)


def test_paired_accuracy_counts_discordant_examples() -> None:
    d = st.paired_accuracy([1, 1, 0, 0, 1], [1, 0, 0, 1, 0])
    assert d.estimate == pytest.approx(0.2) and d.se == pytest.approx(math.sqrt(3 - 1 / 5) / 5)
    rng = np.random.default_rng(4)
    base = rng.random(400) < 0.6
    flip_a, flip_b = rng.random(400) < 0.05, rng.random(400) < 0.08
    ca, cb = base ^ flip_a, base ^ flip_b
    p = st.paired_accuracy(ca.astype(int), cb.astype(int))
    n10, n01 = int(np.sum(ca & ~cb)), int(np.sum(~ca & cb))
    k, m = min(n10, n01), n10 + n01
    exact = min(1.0, 2 * sum(math.comb(m, i) for i in range(k + 1)) / 2**m)  # McNemar's exact test by hand
    assert p.p_value == pytest.approx(exact, rel=1e-9)
    unpaired = math.hypot(math.sqrt(ca.mean() * (1 - ca.mean()) / 400), math.sqrt(cb.mean() * (1 - cb.mean()) / 400))
    assert p.se < unpaired / 2  # the arms agree on most examples: pairing removes that variance


def test_paired_accuracy_false_positive_rate() -> None:
    """Two classifiers with the same accuracy that disagree on 10% of 500 examples: McNemar rejects at 5% at
    most as often as 5%."""
    reps = 2000
    rng = np.random.default_rng(9)
    rejections = 0
    for _ in range(reps):
        base = rng.random(500) < 0.7
        ca, cb = base ^ (rng.random(500) < 0.05), base ^ (rng.random(500) < 0.05)
        rejections += st.paired_accuracy(ca.astype(int), cb.astype(int)).p_value < 0.05
    assert rejections / reps <= 0.05 + _bound(0.05, reps)


def test_paired_difference_is_scipys_paired_t_test_and_carries_the_estimator_error() -> None:
    a, b = np.array([3.0, 5.0, 4.1, 7.0]), np.array([1.0, 2.5, 2.0, 3.3])
    d = st.paired_difference(a - b)
    ref = ttest_rel(a, b)
    ci = ref.confidence_interval(0.95)
    assert d.df == 3 and d.p_value == pytest.approx(ref.pvalue, rel=1e-10)
    assert (d.low, d.high) == pytest.approx((ci.low, ci.high), rel=1e-10)
    e = 0.5
    with_e = st.paired_difference(a - b, estimator_se=e)
    s2n = float(np.var(a - b, ddof=1)) / 4
    assert with_e.se == pytest.approx(math.sqrt(s2n + e * e), rel=1e-12)
    assert with_e.df == pytest.approx((s2n + e * e) ** 2 * 3 / s2n**2, rel=1e-12)  # a known variance adds no term
    assert math.isnan(st.paired_difference([1.0]).low) and st.paired_difference([1.0]).estimate == 1.0


def test_paired_difference_covers_the_mean_difference() -> None:
    """Three pairs sharing a large pair effect: the paired interval covers the true difference 95% of the time."""
    reps = 2000
    rng = np.random.default_rng(3)
    covered = 0
    for _ in range(reps):
        shared = rng.normal(0, 5.0, 3)
        d = st.paired_difference((shared + 1.0 + rng.normal(0, 0.3, 3)) - (shared + rng.normal(0, 0.3, 3)))
        covered += d.low < 1.0 < d.high
    assert abs(covered / reps - 0.95) <= _bound(0.95, reps)


def test_compare_readings_covers_the_truth() -> None:
    d = st.compare_readings(10.0, 7.0, se_a=0.3, se_b=0.4, bound_a=0.5)
    assert d.se == pytest.approx(0.5) and (d.low, d.high) == pytest.approx((3 - 1.959964 * 0.5 - 0.5,
                                                                             3 + 1.959964 * 0.5 + 0.5), rel=1e-6)
    reps = 2000
    rng = np.random.default_rng(12)
    xa, xb = 5.0 + rng.normal(0, 0.3, reps), 4.0 + rng.normal(0, 0.4, reps)
    covered = sum(st.compare_readings(a, b, se_a=0.3, se_b=0.4).low < 1.0 < st.compare_readings(a, b, se_a=0.3,
                                                                                                 se_b=0.4).high
                  for a, b in zip(xa, xb))
    assert abs(covered / reps - 0.95) <= _bound(0.95, reps)


@pytest.mark.parametrize(("call", "argument"), [
    (lambda: st.welch_difference([1.0, 2.0], [3.0, 4.0], level=1.0), "level"),
    (lambda: st.welch_difference([1.0, 2.0], [3.0, 4.0], estimator_se_a=-1.0), "estimator_se_a"),
    (lambda: st.welch_difference([[1.0]], [3.0, 4.0]), "a"),
    (lambda: st.paired_accuracy([1, 0], [1, 0, 1]), "correct_b"),
    (lambda: st.paired_difference([1.0, 2.0], estimator_se=-1.0), "estimator_se"),
    (lambda: st.paired_accuracy([1, 2], [1, 0]), "correct_a"),
    (lambda: st.hierarchical_bootstrap(np.ones((1, 3))), "a"),
    (lambda: st.minimum_detectable_effect(n_a=3, n_b=3, sd_a=1.0, power=0.01), "power"),
    (lambda: st.welch_power(1.0, n_a=1, n_b=3, sd_a=1.0), "n_a"),
    (lambda: st.welch_power(1.0, n_a=3, n_b=3, sd_a=0.0), "sd_a"),
])
def test_bad_input_is_one_clear_error(call, argument: str) -> None:
    with pytest.raises(ConfigError) as info:
        call()
    assert info.value.argument == argument
