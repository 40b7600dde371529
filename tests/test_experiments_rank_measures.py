"""``rank_measures`` on plain per-model records: τ, intervals, verdicts and granulated τ on known answers."""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest
from scipy import stats

from sharpscope.errors import ConfigError
from sharpscope.experiments.rank_correlation import rank_measures, ranking_table, tau_mde
from sharpscope.measures import SharpnessResult

#: The cube of ``test_granulated_tau_on_a_hand_built_cube``: index 4a + 2b + c; ψ_a = 1, ψ_b = −1, ψ_c = 0.
CUBE = [{"a": a, "b": b, "c": c} for a, b, c in itertools.product((0, 1), repeat=3)]
GAPS = [3, 1, 2, 0, 5, 7, 4, 6]


def records(**measures: list[Any]) -> list[dict[str, Any]]:
    return [{"name": f"m{i}", "axes": dict(c), "gap_acc": 0.01 * GAPS[i], "test_error": 0.1 + 0.01 * i,
             "measures": {k: v[i] for k, v in measures.items()}} for i, c in enumerate(CUBE)]


def test_tau_interval_verdict_and_granulated_tau_on_known_answers() -> None:
    index = [float(i) for i in range(8)]
    ranked = rank_measures(records(index=index, gap=list(GAPS), flat=[1.0] * 8), resamples=300, seed=3)
    assert ranked["n"] == 8 and ranked["axes"] == ["a", "b", "c"]
    assert ranked["mde"] == tau_mde(8, resamples=300, seed=3)
    row = ranked["measures"]["index"]
    assert row["gap"]["tau"] == pytest.approx(stats.kendalltau(index, GAPS).statistic)
    assert row["test_error"]["tau"] == pytest.approx(1.0) and row["test_error"]["verdict"] == "positive"
    low, high = row["gap"]["interval"]
    assert -1 <= low <= high <= 1 and 0 < row["gap"]["p_value"] <= 1
    granulated = row["granulated"]
    assert [granulated["axes"][k]["tau"] for k in "abc"] == pytest.approx([1.0, -1.0, 0.0])
    assert granulated["psi"] == pytest.approx(0.0)
    gap = ranked["measures"]["gap"]  # the gap ranks itself perfectly
    assert gap["gap"]["tau"] == pytest.approx(1.0) and gap["gap"]["verdict"] == "positive"
    assert gap["granulated"]["psi"] == pytest.approx(1.0)
    assert ranked["measures"]["flat"]["gap"]["verdict"] == "undefined"


def test_a_measure_given_as_number_dict_or_result_ranks_the_same() -> None:
    values = [0.5, 0.1, 0.7, 0.2, 0.9, 0.3, 0.4, 0.8]
    results = [SharpnessResult(name="worst", value=v, stderr=None, forwards=1, backwards=0, seconds=0.0,
                               settings={}) for v in values]
    ranked = rank_measures(records(number=values, stored=[{"value": v} for v in values], result=results,
                                   reversed=[-v for v in values]), resamples=200)
    rows = ranked["measures"]
    assert rows["number"] == rows["stored"] == rows["result"]
    assert rows["reversed"]["gap"]["tau"] == pytest.approx(-rows["number"]["gap"]["tau"])


def test_granulated_axes_can_be_chosen() -> None:
    ranked = rank_measures(records(index=list(range(8))), axes=["a"], resamples=100)
    assert list(ranked["measures"]["index"]["granulated"]["axes"]) == ["a"]


def test_too_few_models_rank_nothing_and_a_non_finite_measure_is_reported() -> None:
    two = rank_measures(records(index=list(range(8)))[:2], resamples=100)
    assert two["n"] == 2 and two["mde"] is None and two["measures"] == {}
    broken = rank_measures(records(bad=[1.0, math.nan, *range(6)], stored=["NaN", *range(7)]), resamples=100)
    assert broken["measures"] == {"bad": {"error": "a model's value is not finite"},
                                  "stored": {"error": "a model's value is not finite"}}


def test_the_table_states_the_detectable_tau_and_every_measure() -> None:
    ranked = rank_measures(records(index=list(range(8)), bad=[math.inf] * 8), resamples=100)
    text = ranking_table(ranked, ["m9"])
    assert "excluded (stop not reached or diverged): 1 (m9)" in text
    assert f"Smallest detectable |τ| with 8 models: {ranked['mde']['critical']:.3f}" in text
    assert "| index | " in text and "| bad | a model's value is not finite |" in text
    assert "| τ gap [95% CI] |" in text


@pytest.mark.parametrize(("change", "words"), [
    (lambda r: r[3].pop("gap_acc"), "record 3 lacks gap_acc"),
    (lambda r: r[2]["measures"].pop("index"), "record 2 has measures [], record 0 has ['index']"),
    (lambda r: r[1]["axes"].update(d=1), "record 1 has axes ['a', 'b', 'c', 'd']"),
    (lambda r: r[0].update(test_error=math.nan), "record 0: test_error must be a finite number"),
    (lambda r: r[4]["measures"].update(index="sharp"), "measure 'index' must be a number"),
])
def test_bad_records_fail_with_one_line(change: Any, words: str) -> None:
    recs = records(index=list(range(8)))
    change(recs)
    with pytest.raises(ConfigError) as info:
        rank_measures(recs, resamples=100)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_bad_axes_and_containers_fail_with_one_line() -> None:
    with pytest.raises(ConfigError, match="axes must name hyperparameters of the records \\(a, b, c\\); got 'lr'"):
        rank_measures(records(index=list(range(8))), axes=["lr"])
    with pytest.raises(ConfigError, match="records must be a list of dicts"):
        rank_measures({"axes": {}}, resamples=100)  # type: ignore[arg-type]


def test_the_population_figure_draws_plain_records() -> None:
    from sharpscope.plots.population import population_figure

    values = [0.5, 0.1, 0.7, 0.2, 0.9, 0.3, 0.4, 0.8]
    recs = records(index=list(range(8)), plain=values)
    fig, plotted = population_figure({"ranking": rank_measures(recs, resamples=100), "models": recs})
    assert plotted["measures"] == ["index", "plain"] and plotted["runs"] == [f"m{i}" for i in range(8)]
    assert plotted["tau"]["gap"]["tau"] == pytest.approx([stats.kendalltau(list(range(8)), GAPS).statistic,
                                                          stats.kendalltau(values, GAPS).statistic])
    assert {tuple(v["value"]) for k, v in plotted.items() if k.startswith("scatter:")} <= {
        tuple(float(i) for i in range(8)), tuple(values)}
