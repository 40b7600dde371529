"""Verdicts recomputed from the committed study summaries (``figures/*-summary.json``)."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from scipy import stats

from sharpscope.experiments import rejudge
from sharpscope.experiments.verdicts import VERDICTS
from sharpscope.io import jsonsafe
from sharpscope.io.studysummary import StudySummary, read_study_summary

FIGURES = Path(__file__).resolve().parents[1] / "figures"


def _summary(study: str) -> StudySummary:
    path = FIGURES / f"{study}-summary.json"
    if not path.is_file():
        pytest.skip(f"{path.name} is not in this checkout")
    return read_study_summary(path)


def test_escape_from_its_summary() -> None:
    """RS and SA ran at different η′, so A3 cannot test the algorithm; A4 has one seed, so it is inconclusive;
    every interval carries the stored trace stderr."""
    out = rejudge.escape(_summary("escape"))
    assert {r["verdict"] for k, r in out.items() if k != "notes"} <= set(VERDICTS)
    assert out["A3"]["verdict"] == "not testable at this scale" and out["A3"]["lr_perturb"] == {
        "best-sa": pytest.approx(0.01), "best-rs": pytest.approx(0.001)}
    trace = out["A3"]["sa_vs_rs"]["trace"]
    assert trace["estimator_se"] > 1.0 and trace["interval"][1] < 0  # SA's end trace is lower, beyond the noise
    assert out["A4"]["verdict"] == "inconclusive" and "fewer than 3 seeds" in out["A4"]["reason"]
    assert out["A1"]["verdict"] == "partly" and 0 < out["A1"]["interval_points"][0] < out["A1"]["gap_points"] < 20


def test_stored_arm_summaries_read_back_as_records_with_the_runs_trace_errors() -> None:
    """Every stored arm summary read as a record gives its stored numbers back (the same JSON once the two added
    errors are left out), and its trace error is each run's last recorded one."""
    summary = _summary("escape")
    arms = rejudge.with_stored_stderr(summary.results["arms"], summary.stages)
    added = ("trace_stderr", "trace_over_loss_stderr")
    for arm, stored in summary.results["arms"].items():
        again = {k: v for k, v in arms[arm].to_dict().items() if k not in added}
        assert jsonsafe.dumps(again) == jsonsafe.dumps(stored)
    runs = [name for name in summary.stages if name.startswith("best-sa-s")]
    finals = [summary.stages[r].final_measurement for r in runs]
    assert runs and arms["best-sa"].end["trace_stderr"].values == [m.trace_stderr for m in finals if m]


def test_flatness_and_label_noise_from_their_summaries() -> None:
    flat = rejudge.sam_flatness(_summary("sam-flatness"))
    assert flat["G4"]["verdict"] == "inconclusive" and math.isfinite(flat["G4"]["mde"])
    assert flat["G4"]["interval_points"][0] < 0 < flat["G4"]["interval_points"][1]
    assert flat["G1"]["verdict"] == "inconclusive"
    noise = rejudge.label_noise(_summary("label-noise"))
    assert noise["G6"]["verdict"] == "inconclusive" and "share no training loss" in noise["G6"]["reason"]


def test_the_flatness_ratio_is_judged_on_geometric_means() -> None:
    """Log λ of SGD is log 6 + (0, 0.1, −0.1), of SAM (0, 0.1, −0.1): the ratio of geometric means is 6 with the
    interval 6·exp(±t_{0.975,4}·√(2·0.01/3)) = [4.78, 7.53]."""
    from sharpscope.experiments.studies.flatness import _ratio_verdict

    base = [1.0, math.exp(0.1), math.exp(-0.1)]
    sgd = [6.0 * b for b in base]
    assert _ratio_verdict(sgd, base, 4.0).label == "holds"
    assert _ratio_verdict(sgd, base, 5.0).label == "inconclusive"
    assert _ratio_verdict(sgd, base, 8.0).label == "does not hold"
    assert "[4.78, 7.53]" in _ratio_verdict(sgd, base, 8.0).reason
    flat = rejudge.sam_flatness(_summary("sam-flatness"))["G3"]
    assert flat["verdict"] == "does not hold" and "below 5" in flat["reason"]


def test_the_command_writes_verdicts_beside_the_summaries(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _summary("sam-edge")  # skips when absent
    shutil.copy(FIGURES / "sam-edge-summary.json", tmp_path)
    assert rejudge.main([str(tmp_path)]) == 0
    out = json.loads((tmp_path / "verdicts.json").read_text())
    assert out["sam-edge"]["E5-below-2-eta-mlp-rho0.1"]["verdict"] == "not testable at this scale"
    assert out["sam-edge"]["E7-mb-mom"]["verdict"] == "not testable at this scale"
    assert "| E7-mb | holds |" in capsys.readouterr().out


def test_the_smoothing_identity_from_its_summaries() -> None:
    """Antithetic pairs: the identity holds on the GELU/avg-pool CNN, and not on the ReLU/max-pool one, whose
    pairs agree with each other (a high noise ceiling) but not with ∇tr̄; the escape study's independent draws
    cannot test it."""
    out = rejudge.smoothing_study(_summary("smoothing"))
    smooth, relu = out["A5-gelu-avgpool"], out["A5-relu-maxpool"]
    assert smooth["verdict"] == "holds" and smooth["pairing"] == "antithetic" and smooth["nonsmooth"] == []
    assert relu["verdict"] == "does not hold" and "not twice differentiable (MaxPool2d, ReLU)" in relu["reason"]
    assert relu["noise"]["0.01"]["ceiling"] > 0.5 > relu["rhos"]["0.01"][-1]["cosine"]
    escape = rejudge.escape(_summary("escape"))["A5"]
    assert escape["verdict"] == "not testable at this scale" and "first-order term" in escape["reason"]


def _stored(x: object) -> object:
    return jsonsafe.loads(jsonsafe.dumps(x))


def _recomputed(x: object) -> object:
    """The committed values with every float compared to 1e-12 relative: scipy's quantiles and root finds may differ
    in the last digit between machines, so the recomputation is checked to rounding, not to the bit."""
    if isinstance(x, float):
        return pytest.approx(x, rel=1e-12, abs=1e-300)
    if isinstance(x, dict):
        return {k: _recomputed(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_recomputed(v) for v in x]
    return x


def test_escape_a3_is_judged_again_from_its_per_minimizer_differences() -> None:
    """The committed comparisons and verdict come back exactly; the interval is d̄ ± t·√(s²/n + e²) with the
    Welch–Satterthwaite ν; differences where SA wins everywhere make A3 hold, so the verdict is recomputed, not
    copied."""
    summary = _summary("escape-a3")
    out = rejudge.escape_a3(summary)
    stored = summary.to_json()["results"]
    assert _stored(out["A3"]) == _recomputed(stored["A3"])
    for arm, cmp in out["comparisons"].items():
        assert _stored(cmp) == _recomputed({k: v for k, v in stored["comparisons"][arm].items() if k != "pairs"})
    rs = out["comparisons"]["rs"]["trace_paired"]
    d = rs["per_minimizer"]
    n, mean = len(d), sum(d) / len(d)
    var = sum((x - mean) ** 2 for x in d) / (n - 1) / n
    se = math.sqrt(var + rs["estimator_se"] ** 2)
    df = se ** 4 * (n - 1) / var ** 2
    assert rs["interval"] == pytest.approx([mean - stats.t.ppf(0.975, df) * se, mean + stats.t.ppf(0.975, df) * se])
    wins = {arm: {**cmp, "trace_paired": {**cmp["trace_paired"], "per_minimizer": [-10.0, -11.0, -12.0]},
                  "test_acc": {**cmp["test_acc"], "per_minimizer": [0.05, 0.06, 0.05]}}
            for arm, cmp in summary.results["comparisons"].items()}
    better = rejudge.escape_a3(replace(summary, results={**summary.results, "comparisons": wins}))
    assert out["A3"]["verdict"] == "inconclusive" and better["A3"]["verdict"] == "holds"


def test_escape_a4_is_judged_again_from_its_per_minimizer_differences() -> None:
    """The committed comparisons (at the end and at equal loss) and the A4 verdict come back exactly; reversing the
    scaled form's tr(H) differences makes that form hold (none of its runs left its minimizer)."""
    summary = _summary("escape-a4")
    out = rejudge.escape_a4(summary)
    stored = summary.to_json()["results"]
    assert _stored(out["A4"]) == _recomputed(stored["A4"])
    assert _stored(out["comparisons"]) == _recomputed(stored["comparisons"])
    assert _stored(out["at_equal_loss"]) == _recomputed(stored["at_equal_loss"])
    assert out["A4"]["verdict"] == "does not hold" and out["A4"]["scaled"]["label"] == "does not hold"
    scaled = summary.results["comparisons"]["scaled"]
    flipped = {key: {**cmp, "trace_paired": {**cmp["trace_paired"],
                                             "per_minimizer": [-x for x in cmp["trace_paired"]["per_minimizer"]]}}
               for key, cmp in scaled.items()}
    results = {**summary.results, "comparisons": {**summary.results["comparisons"], "scaled": flipped}}
    again = rejudge.escape_a4(replace(summary, results=results))
    assert again["A4"]["scaled"]["label"] == "holds" and again["A4"]["verdict"] == "does not hold"  # unscaled: B = 1 left
