"""The population study end to end at smoke scale: training to the stop, the measures, the rankings, the
table, the figure, and resuming without retraining or remeasuring."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from sharpscope.errors import ConfigError
from sharpscope.experiments import rank_correlation as rc
from sharpscope.experiments.figures import study_figures
from sharpscope.experiments.studies import STUDIES, run_study, study_stages
from sharpscope.experiments.studies import population as pop
from sharpscope.io.studysummary import read_study_summary

FIGURES = Path(__file__).resolve().parents[1] / "figures"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("population")
    return out, run_study("population", "smoke", out)


def test_registered_with_a_grid_over_every_axis() -> None:
    assert "population" in STUDIES
    names = [s.name for s in study_stages("population", "cpu")]
    assert len(names) == len(set(names)) == 32
    assert [pop._axes_of(n) for n in names] == pop.grid("cpu")
    cfg = pop.model_config("cpu", pop.grid("cpu")[-1])
    assert cfg.stop_at_train_acc == 0.99 and cfg.optimizer == "sam" and cfg.optimizer_kwargs["weight_decay"] == 5e-4
    assert pop.model_config("cpu", pop.grid("cpu")[0]).optimizer == "sgd"


def test_smoke_models_are_trained_to_the_stop_and_measured(smoke: tuple[Path, dict[str, Any]]) -> None:
    out, summary = smoke
    results = summary.results
    models = results["models"]
    assert len(models) == len(pop.grid("smoke")) == 8
    for m in models:
        run = summary.stages[m["name"]]
        assert m["reached_stop"] == (run.status == "reached_train_acc")
        if not m["reached_stop"]:
            assert m["name"] in results["excluded"]
            continue
        # the study's own evaluation of the final weights agrees with the tracker's at the stop
        assert m["train_acc"] == pytest.approx(run.final_measurement.train_acc, abs=1e-6)
        assert m["train_acc"] >= pop.SCALES["smoke"].target
        assert m["test_acc"] == pytest.approx(run.final_measurement.test_acc, abs=1e-6)
        assert m["gap_acc"] == pytest.approx(m["train_acc"] - m["test_acc"])
        correct = m["test_correct"]
        assert len(correct) == 512 and set(correct) <= {"0", "1"}
        assert correct.count("1") / 512 == pytest.approx(m["test_acc"])
        measures = m["measures"]
        assert set(measures) == {"lambda_max", "trace", *pop.measure_plan(pop.SCALES["smoke"])}
        assert measures["trace"]["stderr"] > 0 and measures["lambda_max"]["hvps"] > 0
        assert measures["worst-adaptive-l2-0.5"]["convergence"]["steps"] == 5
        assert measures["worst-adaptive-l2-0.5-m16"]["settings"]["m"] == 16
        assert measures["pacbayes-adaptive"]["settings"]["adaptive"] is True
        for r in measures.values():
            assert r["seconds"] >= 0 and r["settings"]
    assert len(results["excluded"]) < len(models)
    pairs = results["sam_vs_sgd"]
    assert len(pairs) == 4 and all(p["sgd"] == p["sam"].replace("rho0.05", "rho0") for p in pairs)
    by_name = {m["name"]: m for m in models}
    for p in pairs:  # the paired difference is the difference of the two accuracies
        assert p["difference"] == pytest.approx(by_name[p["sam"]]["test_acc"] - by_name[p["sgd"]]["test_acc"])
        assert p["interval"][0] <= p["difference"] <= p["interval"][1] and 0 < p["p_value"] <= 1
    before = summary.data["mde_before"]  # computed before any training, for the whole grid
    assert before["n"] == 8 and before == rc.tau_mde(8, resamples=pop.SCALES["smoke"].resamples)


def test_smoke_rankings_table_and_figure(smoke: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    out, summary = smoke
    ranking = summary.results["ranking"]
    included = [m for m in summary.results["models"] if m["reached_stop"]]
    assert ranking["n"] == len(included)
    gap = [m["gap_acc"] for m in included]
    for name, row in ranking["measures"].items():
        values = [m["measures"][name]["value"] for m in included]
        assert row["gap"]["tau"] == pytest.approx(rc.kendall_tau(values, gap), nan_ok=True)
        assert set(row["granulated"]["axes"]) == set(pop.AXES)
    assert "Smallest detectable |τ|" in summary.results["table"]
    assert (out / pop.TABLE_FILE).read_text(encoding="utf-8") == summary.results["table"]
    written = study_figures("population", out, tmp_path, command="sharpscope reproduce population --scale smoke")
    assert {p.name for p in written} >= {"population-tau.png", "population-tau.pdf", "population-tau.json"}
    stored = json.loads((tmp_path / "population-tau.json").read_text())
    assert stored["data"]["plot"]["measures"] == list(ranking["measures"])
    assert (f"over the {len(included)} models that reached 90% training accuracy" in stored["caption"]
            and "the grid is lr × SAM ρ × width, one seed (0) per configuration, 256 MNIST-1D training images, "
                "512 test images" in stored["caption"] and "one small MLP family" in stored["caption"])


def test_caption_of_the_committed_figure_is_the_studys() -> None:
    """The committed figure's caption is the one the study writes from the committed summary; the models left
    out are counted by why."""
    summary = read_study_summary(FIGURES / "population-summary.json")
    assert pop.caption(summary) == json.loads((FIGURES / "population-tau.json").read_text())["caption"]
    models = summary.results["models"]
    one_diverged = [{**m, "status": "diverged"} if m["name"] == summary.results["excluded"][0] else m for m in models]
    text = pop.caption(replace(summary, results={**summary.results, "models": one_diverged}))
    assert "(2 of the 32-model grid hit the 3 000-step cap or diverged and are excluded)" in text
    all_ranked = [{**m, "reached_stop": True} for m in models]
    text = pop.caption(replace(summary, results={**summary.results, "models": all_ranked}))
    assert "reached 99% training accuracy (the whole 32-model grid)" in text


def test_resume_reuses_training_and_measures(smoke: tuple[Path, dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    out, first = smoke

    def refuse(*_: Any, **__: Any) -> Any:
        raise AssertionError("a finished model was measured again")

    monkeypatch.setattr(pop, "measure", refuse)
    again = run_study("population", "smoke", out)
    assert all(s.already_complete for s in again.stages.values())
    assert again.to_json()["results"]["ranking"] == first.to_json()["results"]["ranking"]


def test_options_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="takes no options"):
        run_study("population", "smoke", tmp_path, options={"construction": "x"})
    assert not any(tmp_path.iterdir())


def test_ranking_of_a_synthetic_population() -> None:
    models = [{"axes": c, "gap_acc": 0.01 * i, "test_error": 0.02 * i,
               "measures": {"exact": {"value": float(i)}, "reversed": {"value": -float(i)}}}
              for i, c in enumerate(pop.grid("cpu"))]
    ranked = pop.rank_measures(models, resamples=200)
    assert ranked["measures"]["exact"]["gap"]["tau"] == pytest.approx(1.0)
    assert ranked["measures"]["exact"]["gap"]["verdict"] == "positive"
    assert ranked["measures"]["reversed"]["test_error"]["verdict"] == "negative"
    assert ranked["measures"]["exact"]["granulated"]["psi"] == pytest.approx(1.0)
    assert "exact" in pop.table(ranked, ["x"])
