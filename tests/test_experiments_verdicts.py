"""The verdict taxonomy: decisions from intervals, and how often two copies of one arm pass.

Rates are checked within 5 binomial standard errors plus 0.002 (as in ``test_experiments_statistics.py``):
seeded, and a 5-sigma excursion has probability below 6e-7.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from sharpscope.errors import ConfigError
from sharpscope.experiments import statistics as st
from sharpscope.experiments import verdicts as v


def _diff(estimate: float, low: float, high: float, n: int = 3) -> st.Difference:
    return st.Difference(estimate=estimate, low=low, high=high, se=1.0, df=4.0, p_value=math.nan, level=0.95,
                         method="welch", n_a=n, n_b=n)


def _rows(r: dict[str, np.ndarray], n: int) -> list[st.Difference]:
    return [st.Difference(estimate=float(e), low=float(lo), high=float(hi), se=float(se), df=float(df),
                          p_value=float(p), level=0.95, method="welch", n_a=n, n_b=n)
            for e, lo, hi, se, df, p in zip(r["estimate"], r["low"], r["high"], r["se"], r["df"], r["p_value"])]


def _bound(p: float, reps: int) -> float:
    return 5.0 * math.sqrt(p * (1 - p) / reps) + 0.002


def test_labels() -> None:
    assert v.VERDICTS == ("holds", "partly", "inconclusive", "not testable at this scale", "does not hold", "not run")
    with pytest.raises(ConfigError) as info:
        v.Verdict("not demonstrated")
    assert info.value.argument == "label"
    assert v.Verdict(v.INCONCLUSIVE, "x", mde=2.5).text() == "inconclusive (MDE 2.5): x"


def test_judge_difference_decides_by_the_side_of_the_interval() -> None:
    assert v.judge_difference(_diff(-3.0, -5.0, -1.0), better="lower").label == v.HOLDS
    assert v.judge_difference(_diff(-3.0, -5.0, -1.0), better="higher").label == v.DOES_NOT_HOLD
    open_ = v.judge_difference(_diff(-1.0, -3.0, 1.0), better="lower", mde=4.2)
    assert open_.label == v.INCONCLUSIVE and open_.mde == 4.2 and "contains 0" in open_.reason
    # The interval contains 0 but rules out an improvement of 2: the claimed effect is excluded.
    assert v.judge_difference(_diff(0.5, -1.0, 2.0), better="lower", effect_of_interest=2.0).label == v.DOES_NOT_HOLD
    assert v.judge_difference(_diff(0.5, -1.0, 2.0), better="lower", effect_of_interest=0.5).label == v.INCONCLUSIVE
    few = v.judge_difference(_diff(-3.0, -5.0, -1.0, n=2), better="lower", mde=1.0)
    assert few.label == v.INCONCLUSIVE and "fewer than 3 seeds" in few.reason
    assert v.judge_difference(_diff(-1.0, math.nan, math.nan), better="lower").label == v.INCONCLUSIVE
    with pytest.raises(ConfigError):
        v.judge_difference(_diff(-1.0, -2.0, 0.0), better="smaller")


@pytest.mark.parametrize("n", [3, 5, 10])
def test_two_copies_of_one_arm_pass_a_difference_at_most_alpha(n: int) -> None:
    """Both arms drawn from one distribution: "holds" (a lower than b) at most (1 − level)/2 = 2.5% of the time,
    below the 5% a two-sided test would allow."""
    reps = 20_000
    rng = np.random.default_rng(n)
    x = rng.normal(5.0, 2.0, (reps, 2 * n))
    r = st.welch_intervals(x[:, :n], x[:, n:])
    rate = np.mean([v.judge_difference(d, better="lower").passes for d in _rows(r, n)])
    assert rate <= 0.025 + _bound(0.025, reps)


@pytest.mark.parametrize("margin", [0.0, 0.5])
def test_two_copies_pass_a_non_inferiority_claim_at_most_alpha_at_its_margin(margin: float) -> None:
    """Non-inferiority with margin m is tested where it is hardest to pass wrongly: a worse than b by exactly m
    (with m = 0: two copies of one arm). It holds at most 2.5% of the time."""
    reps, n = 20_000, 3
    rng = np.random.default_rng(int(10 * margin) + 1)
    a, b = rng.normal(-margin, 1.0, (reps, n)), rng.normal(0.0, 1.0, (reps, n))
    r = st.welch_intervals(a, b)
    rate = np.mean([v.judge_non_inferiority(d, margin=margin).passes for d in _rows(r, n)])
    assert rate <= 0.025 + _bound(0.025, reps)


def test_non_inferiority_and_equivalence_labels() -> None:
    assert v.judge_non_inferiority(_diff(0.1, -0.2, 0.4), margin=0.3).label == v.HOLDS
    assert v.judge_non_inferiority(_diff(-1.0, -1.5, -0.5), margin=0.3).label == v.DOES_NOT_HOLD
    assert v.judge_non_inferiority(_diff(0.0, -0.5, 0.5), margin=0.3).label == v.INCONCLUSIVE
    assert v.judge_non_inferiority(_diff(0.1, -0.2, 0.4), margin=0.3, better="lower").label == v.INCONCLUSIVE
    assert v.judge_equivalence(_diff(0.0, -1.0, 1.0), margin=2.0).label == v.HOLDS
    assert v.judge_equivalence(_diff(0.0, -3.0, 3.0), margin=2.0).label == v.INCONCLUSIVE
    assert v.judge_equivalence(_diff(3.0, 2.5, 3.5), margin=2.0).label == v.DOES_NOT_HOLD
    with pytest.raises(ConfigError):
        v.judge_non_inferiority(_diff(0.0, -1.0, 1.0), margin=-0.1)


def test_a_criterion_met_at_initialisation_or_by_a_control_is_not_a_pass() -> None:
    assert v.judge_threshold(True, reason="max λ 0.7").label == v.HOLDS
    assert v.judge_threshold(False, reason="max λ 0.9").label == v.DOES_NOT_HOLD
    at_init = v.judge_threshold(True, reason="max λ 0.7", met_at_start=True)
    assert at_init.label == v.NOT_TESTABLE and "initialisation" in at_init.reason
    assert v.judge_threshold(True, reason="r", met_by_control=True).label == v.NOT_TESTABLE

    main = v.Verdict(v.HOLDS, "SA below RS")
    assert v.with_controls(main, {"twin": v.Verdict(v.HOLDS)}).label == v.HOLDS
    assert v.with_controls(main, {"twin": v.Verdict(v.INCONCLUSIVE, mde=3.0)}).mde == 3.0
    assert v.with_controls(main, {"twin": v.Verdict(v.DOES_NOT_HOLD)}).label == v.DOES_NOT_HOLD
    assert v.with_controls(v.Verdict(v.INCONCLUSIVE), {"twin": v.Verdict(v.HOLDS)}).label == v.INCONCLUSIVE


def test_combine_a_conjunction() -> None:
    h, i, d = v.Verdict(v.HOLDS), v.Verdict(v.INCONCLUSIVE, mde=2.0), v.Verdict(v.DOES_NOT_HOLD)
    assert v.combine({"a": h, "b": h}).label == v.HOLDS
    assert v.combine({"a": h, "b": d}).label == v.PARTLY
    assert v.combine({"a": h, "b": i}).label == v.PARTLY
    assert v.combine({"a": i, "b": d}).label == v.DOES_NOT_HOLD
    assert v.combine({"a": i, "b": v.Verdict(v.INCONCLUSIVE, mde=1.0)}).mde == 1.0
    assert v.combine({"a": v.Verdict(v.NOT_TESTABLE), "b": v.Verdict(v.NOT_RUN)}).label == v.NOT_TESTABLE
    assert v.combine({"a": v.Verdict(v.NOT_RUN)}).label == v.NOT_RUN
