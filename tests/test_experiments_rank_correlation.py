"""Kendall's τ, its bootstrap interval, permutation null, MDE and Jiang et al.'s granulated τ on known answers."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from sharpscope.errors import ConfigError
from sharpscope.experiments.rank_correlation import (
    bootstrap_tau,
    granulated_tau,
    kendall_tau,
    tau_mde,
    tau_null,
    tau_rows,
)


def test_monotone_gives_one_and_reversed_minus_one() -> None:
    x = np.linspace(0.0, 1.0, 12)
    assert kendall_tau(x, np.exp(3 * x)) == pytest.approx(1.0)
    assert kendall_tau(x, -x**3) == pytest.approx(-1.0)
    boot = bootstrap_tau(x, np.exp(x), resamples=200, seed=1)
    assert boot["tau"] == pytest.approx(1.0) and boot["low"] == pytest.approx(1.0) and boot["high"] == pytest.approx(1.0)
    null = tau_null(x, x, resamples=999, seed=0)
    assert null["p_value"] < 0.01 and 0 < null["critical"] < 1


def test_tau_b_counts_pairs_by_hand() -> None:
    # pairs of (0,1,2,3) against (0,2,1,3): 5 concordant, 1 discordant, no ties → (5 − 1)/6
    assert kendall_tau([0, 1, 2, 3], [0, 2, 1, 3]) == pytest.approx(4 / 6)
    # a tie in y: C = 4, D = 1, T_y = 1 → (4 − 1)/√(6·5)
    assert kendall_tau([0, 1, 2, 3], [0, 1, 1, 3]) == pytest.approx(5 / math.sqrt(30))
    assert math.isnan(kendall_tau([1, 1, 1], [1, 2, 3]))


def test_vectorised_rows_equal_scipy_tau_b_with_ties() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.integers(0, 4, size=(40, 9)).astype(float), rng.normal(size=(40, 9))
    b[:, :3] = b[:, 0:1]  # ties in b too
    expected = [stats.kendalltau(x, y, variant="b").statistic if np.ptp(x) else math.nan for x, y in zip(a, b)]
    np.testing.assert_allclose(tau_rows(a, b), expected, rtol=1e-12, atol=1e-12)


def test_independent_interval_covers_zero_at_nominal_rate() -> None:
    rng = np.random.default_rng(7)
    reps, covered, rejected = 300, 0, 0
    for r in range(reps):
        x, y = rng.normal(size=25), rng.normal(size=25)
        boot = bootstrap_tau(x, y, resamples=500, seed=r)
        covered += boot["low"] <= 0 <= boot["high"]
        rejected += tau_null(x, y, resamples=499, seed=r)["p_value"] < 0.05
    se = math.sqrt(0.95 * 0.05 / reps)
    assert abs(covered / reps - 0.95) < 3.5 * se
    assert abs(rejected / reps - 0.05) < 3.5 * se


def test_mde_matches_the_null_spread() -> None:
    out = tau_mde(30, resamples=2000, seed=0)
    sd0 = math.sqrt(2 * (2 * 30 + 5) / (9 * 30 * 29))
    assert out["null_sd"] == pytest.approx(sd0, rel=0.08)
    assert out["critical"] == pytest.approx(stats.norm.ppf(0.975) * sd0, rel=0.1)
    assert out["mde"] == pytest.approx((stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) * sd0)
    assert tau_mde(60)["critical"] < out["critical"]


def test_granulated_tau_on_a_hand_built_cube() -> None:
    configs = [{"a": a, "b": b, "c": c} for a, b, c in itertools.product((0, 1), repeat=3)]  # index 4a + 2b + c
    values = list(range(8))
    gaps = [3, 1, 2, 0, 5, 7, 4, 6]
    # axis a: pairs (i, i+4) all rise in the gap → +1; axis b: pairs (i, i+2) all fall → −1;
    # axis c: (0,1), (2,3) fall and (4,5), (6,7) rise → 0; Ψ = (1 − 1 + 0)/3 = 0
    out = granulated_tau(values, gaps, configs, ("a", "b", "c"))
    assert out["axes"]["a"]["tau"] == pytest.approx(1.0) and out["axes"]["a"]["groups"] == 4
    assert out["axes"]["b"]["tau"] == pytest.approx(-1.0)
    assert out["axes"]["c"]["tau"] == pytest.approx(0.0)
    assert out["psi"] == pytest.approx(0.0)


def test_granulated_tau_groups_of_three_and_singletons() -> None:
    configs = [{"lr": lr, "bs": bs} for lr in (1, 2, 3) for bs in (8, 16)] + [{"lr": 9, "bs": 99}]
    values = [1, 5, 2, 4, 3, 6, 0]
    gaps = [1, 3, 2, 2, 3, 1, 0]
    out = granulated_tau(values, gaps, configs, ("lr", "bs"))
    # lr varies within bs=8: values (1,2,3) vs gaps (1,2,3) → 1; within bs=16: (5,4,6) vs (3,2,1) → −1/3
    assert out["axes"]["lr"]["tau"] == pytest.approx((1 - 1 / 3) / 2)
    # bs varies within each lr: (1,5)/(1,3) +1, (2,4)/(2,2) tie → skipped, (3,6)/(3,1) −1; the lone model is in no group
    assert out["axes"]["bs"]["tau"] == pytest.approx(0.0) and out["axes"]["bs"]["undefined_groups"] == 1
    assert out["psi"] == pytest.approx((1 / 3 + 0) / 2)


def test_bad_input_is_one_clear_error() -> None:
    with pytest.raises(ConfigError, match="one length"):
        kendall_tau([1, 2], [1, 2, 3])
    with pytest.raises(ConfigError, match="finite"):
        bootstrap_tau([1, math.nan, 2], [1, 2, 3])
    with pytest.raises(ConfigError, match="missing"):
        granulated_tau([1, 2], [1, 2], [{"a": 1}, {"b": 2}], ("a",))
