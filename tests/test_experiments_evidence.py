"""The evidence helpers on synthetic numbers with answers worked out exactly."""

from __future__ import annotations

import math
from dataclasses import replace
from itertools import pairwise

import numpy as np
import pytest
from scipy.stats import spearmanr, ttest_ind

from sharpscope.experiments import evidence
from sharpscope.experiments.evidence import (
    VERDICTS,
    SeedStats,
    binomial_stderr,
    common_loss_levels,
    compare_seeds,
    interpolate_at_loss,
    seed_stats,
    spearman_with_ci,
)
from sharpscope.io import jsonsafe


def _linear_in_log(loss: float) -> float:
    return 3.0 - 2.0 * math.log(loss)


def test_interpolation_is_exact_when_the_value_is_linear_in_log_loss() -> None:
    losses = [2.0, 1.3, 0.7, 0.31, 0.05, 0.011]
    values = [_linear_in_log(loss) for loss in losses]
    levels = [2.0, 1.7, 1.0, 0.5, 0.2, 0.05, 0.02, 0.011]
    got = interpolate_at_loss(losses, values, levels)
    for level, v in zip(levels, got, strict=True):
        assert v == pytest.approx(_linear_in_log(level), abs=1e-12, rel=0)


def test_interpolation_by_hand_between_two_records() -> None:
    # Halfway in log between 4 and 1 is 2: the value is halfway between 10 and 20.
    assert interpolate_at_loss([4.0, 1.0], [10.0, 20.0], [2.0]) == [pytest.approx(15.0, abs=1e-12)]


def test_first_crossing_on_a_non_monotone_run() -> None:
    losses = [1.0, 0.5, 0.8, 0.25, 0.6, 0.1]
    values = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    got = interpolate_at_loss(losses, values, [0.5, 0.7, 0.4, 0.6, 0.1])
    assert got[0] == 1.0  # reached exactly at record 1, not later
    # 0.7 is first crossed between records 0 and 1, not between 2 and 3 (0.8 → 0.25).
    assert got[1] == pytest.approx(math.log(1.0 / 0.7) / math.log(2.0), abs=1e-12)
    # 0.4 is first crossed between records 2 and 3 (0.8 → 0.25).
    assert got[2] == pytest.approx(2.0 + math.log(0.8 / 0.4) / math.log(0.8 / 0.25), abs=1e-12)
    assert got[3] == pytest.approx(math.log(1.0 / 0.6) / math.log(2.0), abs=1e-12)
    assert got[4] == 5.0  # the last record


def test_unreached_levels_and_levels_above_the_first_loss_are_nan() -> None:
    got = interpolate_at_loss([1.0, 0.5, 0.3], [1.0, 2.0, 3.0], [1.5, 0.29, 0.0, -1.0, math.nan])
    assert all(math.isnan(v) for v in got)
    # A run that rises first: a level between its first loss and its peak is above the first loss.
    assert math.isnan(interpolate_at_loss([1.0, 2.0, 0.5], [0.0, 1.0, 2.0], [1.5])[0])
    assert math.isnan(interpolate_at_loss([], [], [1.0])[0])


def test_non_finite_and_non_positive_records_are_skipped() -> None:
    losses = [4.0, math.nan, 0.0, -1.0, 3.0, 1.0]
    values = [10.0, 99.0, 99.0, 99.0, math.inf, 20.0]
    # What remains is (4, 10), (1, 20).
    assert interpolate_at_loss(losses, values, [2.0]) == [pytest.approx(15.0, abs=1e-12)]
    with pytest.raises(ValueError):
        interpolate_at_loss([1.0, 0.5], [1.0], [0.7])


def test_common_levels_of_three_runs() -> None:
    runs = [
        [2.0, 1.0, 0.3, 0.4, 0.1],   # initial 2.0, minimum 0.1
        [1.6, 0.9, 0.05, 0.2],       # initial 1.6, minimum 0.05
        [2.5, 3.0, 0.5, 0.2, 0.25],  # initial 2.5, minimum 0.2
    ]
    levels = common_loss_levels(runs, num=5)
    assert len(levels) == 5
    assert levels[0] == 1.6 and levels[-1] == 0.2
    ratio = (0.2 / 1.6) ** 0.25
    for i, level in enumerate(levels):
        assert level == pytest.approx(1.6 * ratio**i, rel=1e-12)
    assert all(a > b for a, b in pairwise(levels))
    # Every run reaches every level.
    for losses in runs:
        assert not any(math.isnan(v) for v in interpolate_at_loss(losses, list(range(len(losses))), levels))


def test_common_levels_empty_when_a_run_never_reaches_the_others_start() -> None:
    assert common_loss_levels([[1.0, 0.5], [0.4, 0.1]]) == []
    assert common_loss_levels([]) == []
    assert common_loss_levels([[1.0, 0.5], [math.nan]]) == []
    assert common_loss_levels([[1.0, 0.5], [0.5, 0.5]]) == [0.5]


def test_binomial_stderr_exact() -> None:
    assert binomial_stderr(0.5, 100) == 0.05
    assert binomial_stderr(0.9, 10000) == pytest.approx(0.003, rel=1e-12)
    assert binomial_stderr(0.0, 10) == 0.0 and binomial_stderr(1.0, 10) == 0.0
    assert math.isnan(binomial_stderr(0.5, 0))
    with pytest.raises(ValueError):
        binomial_stderr(1.5, 10)


def test_seed_stats_ignores_nan() -> None:
    s = seed_stats([1.0, 2.0, math.nan, 3.0])
    assert (s.mean, s.std, s.n, len(s.values)) == (2.0, 1.0, 3, 4)
    one = seed_stats([5.0, math.nan])
    assert one.mean == 5.0 and math.isnan(one.std) and one.n == 1
    none = seed_stats([])
    assert math.isnan(none.mean) and none.n == 0 and none.values == []


def test_seed_stats_are_stored_as_a_dict_and_read_back() -> None:
    """:meth:`SeedStats.to_dict` under the stored names, read back by :meth:`SeedStats.from_dict` to the same JSON;
    a stored non-finite value (``"NaN"``) reads as NaN, a missing field as no seeds."""
    s = seed_stats([1.0, "x", 4.0])  # type: ignore[list-item]
    stored = s.to_dict()
    assert list(stored) == ["mean", "std", "n", "values"] and stored["n"] == 2 and stored["mean"] == 2.5
    text = jsonsafe.dumps(stored)
    assert '"NaN"' in text and jsonsafe.dumps(SeedStats.from_dict(jsonsafe.loads(text)).to_dict()) == text
    back = SeedStats.from_dict(jsonsafe.loads(text))
    assert back.values[0] == 1.0 and math.isnan(back.values[1]) and back.std == pytest.approx(math.sqrt(4.5))
    empty = SeedStats.from_dict({})
    assert math.isnan(empty.mean) and math.isnan(empty.std) and (empty.n, empty.values) == (0, [])


def test_compare_seeds_is_welch_interval_of_the_difference() -> None:
    """Means 2 and 3.5, sds 1 and 1: the interval and p-value are scipy's Welch test; it contains 0, so the claim
    is inconclusive with a finite MDE."""
    a, b = [1.0, 2.0, 3.0], [2.5, 3.5, 4.5]
    c = compare_seeds(a, b, lower_is_better=True)
    ref = ttest_ind(a, b, equal_var=False)
    ci = ref.confidence_interval(0.95)
    assert c.difference.estimate == -1.5 and c.a_better
    d = c.difference
    assert [d.low, d.high] == pytest.approx([ci.low, ci.high], rel=1e-12) and d.p_value == pytest.approx(ref.pvalue)
    assert c.verdict.label == "inconclusive" and not c.verdict.passes and 1.5 < c.mde < 6.0


def test_compare_seeds_interval_below_zero_holds_and_wrong_direction_does_not() -> None:
    c = compare_seeds([1.0, 2.0, 3.0], [4.0, 5.0, 6.0], lower_is_better=True)
    assert c.difference.estimate == -3.0 and c.difference.high < 0 and c.verdict.passes and c.verdict.label == "holds"
    w = compare_seeds([1.0, 2.0, 3.0], [4.0, 5.0, 6.0], lower_is_better=False)
    assert not w.a_better and not w.verdict.passes and w.verdict.label == "does not hold"
    assert compare_seeds([4.0, 5.0, 6.0], [1.0, 2.0, 3.0], lower_is_better=False).verdict.passes


def test_compare_seeds_sees_what_the_sd_sum_rule_misses() -> None:
    """Ten seeds a side, sd 1, difference 1.5: |d| < sd_a + sd_b, so the old rule said no; Welch's interval
    (se √(2/10) ≈ 0.45) lies below 0."""
    z = np.linspace(-1.0, 1.0, 10)
    z = z / z.std(ddof=1)
    c = compare_seeds(list(z), list(z + 1.5), lower_is_better=True)
    assert abs(c.difference.estimate) < 2.0 and c.verdict.passes


def test_compare_seeds_estimator_error_widens_the_interval() -> None:
    plain = compare_seeds([1.0, 2.0, 3.0], [4.0, 5.0, 6.0], lower_is_better=True)
    noisy = compare_seeds([1.0, 2.0, 3.0], [4.0, 5.0, 6.0], lower_is_better=True, estimator_se_a=2.0,
                          estimator_se_b=2.0)
    assert noisy.difference.se == pytest.approx(math.sqrt(plain.difference.se ** 2 + 8.0))
    assert plain.verdict.passes and noisy.verdict.label == "inconclusive" and noisy.mde > plain.mde


def test_compare_seeds_two_seeds_is_inconclusive() -> None:
    c = compare_seeds([1.0, 1.1], [9.0, 9.1, 9.2], lower_is_better=True)
    assert not c.verdict.passes and c.a_better and c.verdict.label == "inconclusive"
    assert "fewer than 3" in c.verdict.reason
    # A NaN seed does not count towards the three.
    c = compare_seeds([1.0, 1.1, math.nan], [9.0, 9.1, 9.2], lower_is_better=True)
    assert not c.verdict.passes and c.a.n == 2 and c.verdict.label == "inconclusive"


def test_a_comparison_is_stored_with_its_numbers_under_their_names() -> None:
    """:meth:`Comparison.to_dict` holds the record's own numbers; an accuracy comparison adds its binomial error; a
    stored comparison read back as a verdict is the record's verdict (with the MDE where finite)."""
    c = compare_seeds([1.0, 2.0, 3.0], [2.5, 3.5, 4.5], lower_is_better=True, estimator_se_a=0.3)
    stored = c.to_dict()
    assert list(stored) == ["a", "b", "difference", "interval", "level", "se", "df", "p_value", "estimator_se", "mde",
                            "a_better", "verdict", "reason", "holds"]
    assert stored["interval"] == [c.difference.low, c.difference.high] and stored["se"] == c.difference.se
    assert stored["estimator_se"] == 0.3 and stored["mde"] == c.mde == c.verdict.mde and stored["a"] == c.a.to_dict()
    assert (stored["verdict"], stored["reason"], stored["holds"]) == (c.verdict.label, c.verdict.reason, False)
    acc = replace(c, binomial_stderr=0.01).to_dict()
    assert acc == {**stored, "binomial_stderr": 0.01, "paired": False}
    one = compare_seeds([1.0], [2.5, 3.5], lower_is_better=True)
    assert math.isnan(one.mde) and one.verdict.mde is None and "binomial_stderr" not in one.to_dict()


def test_spearman_perfectly_monotone_gives_one() -> None:
    x = np.linspace(0.1, 3.0, 12)
    r = spearman_with_ci(x, np.exp(x) + 7.0, resamples=500)
    assert r["rho"] == pytest.approx(1.0, abs=1e-12) and r["n"] == 12
    assert r["ci"][0] == pytest.approx(1.0, abs=1e-12) and r["ci"][1] == pytest.approx(1.0, abs=1e-12)
    assert 0 < r["resamples_used"] <= 500
    neg = spearman_with_ci(x, -x, resamples=200)
    assert neg["rho"] == pytest.approx(-1.0, abs=1e-12) and neg["ci"][1] == pytest.approx(-1.0, abs=1e-12)


def test_spearman_random_data_matches_scipy_and_its_ci_contains_rho() -> None:
    rng = np.random.default_rng(123)
    x = rng.normal(size=40)
    y = 0.5 * x + rng.normal(size=40)
    x_nan, y_nan = np.append(x, math.nan), np.append(y, 1.0)  # the unpaired point is dropped
    r = spearman_with_ci(x_nan, y_nan, resamples=1000, seed=7)
    assert r["n"] == 40
    assert r["rho"] == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)
    assert r["ci"][0] < r["rho"] < r["ci"][1]
    assert r["ci"][0] >= -1.0 and r["ci"][1] <= 1.0
    assert r["resamples_used"] == 1000
    again = spearman_with_ci(x_nan, y_nan, resamples=1000, seed=7)
    assert again == r
    other = spearman_with_ci(x_nan, y_nan, resamples=1000, seed=8)
    assert other["rho"] == r["rho"] and other["ci"] != r["ci"]


def test_spearman_too_few_or_constant_is_nan() -> None:
    r = spearman_with_ci([1.0, 2.0], [3.0, 4.0])
    assert math.isnan(r["rho"]) and all(math.isnan(v) for v in r["ci"]) and r["n"] == 2
    c = spearman_with_ci([1.0, 2.0, 3.0, 4.0], [5.0, 5.0, 5.0, 5.0])
    assert math.isnan(c["rho"]) and c["n"] == 4


def test_verdicts() -> None:
    assert VERDICTS == ("holds", "partly", "inconclusive", "not testable at this scale", "does not hold", "not run")
    assert set(evidence.__all__) >= {"VERDICTS", "interpolate_at_loss", "compare_seeds", "spearman_with_ci"}
