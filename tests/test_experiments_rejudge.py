"""Verdicts recomputed from the committed study summaries (``figures/*-summary.json``)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from sharpscope.experiments import rejudge
from sharpscope.experiments.verdicts import VERDICTS

FIGURES = Path(__file__).resolve().parents[1] / "figures"


def _summary(study: str) -> dict:
    path = FIGURES / f"{study}-summary.json"
    if not path.is_file():
        pytest.skip(f"{path.name} is not in this checkout")
    return json.loads(path.read_text())


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
