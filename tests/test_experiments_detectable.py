"""The smallest detectable effect of each claim, computed and printed before a study's first stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sharpscope.experiments import statistics
from sharpscope.experiments.detectable import Assumption, lines, plan
from sharpscope.experiments.studies import STUDIES

FIGURES = Path(__file__).resolve().parents[1] / "figures"


def test_a_single_reading_adds_no_seed_variance() -> None:
    """An arm of one reading with sd 0 is the one-sample case: its count does not matter; an arm of one seed
    whose spread is assumed has no MDE; without any noise there is none either."""
    one, five = plan([Assumption("X", "q", 3, 1, 1.0, 0.0, 0.5, "s"), Assumption("X", "q", 3, 5, 1.0, 0.0, 0.5, "s")])
    assert one["mde"] == pytest.approx(five["mde"], rel=1e-9)
    assert one["mde"] == pytest.approx(statistics.minimum_detectable_effect(n_a=3, n_b=2, sd_a=1.0, sd_b=0.0,
                                                                           estimator_se=0.5))
    lone, quiet = plan([Assumption("Y", "q", 1, 1, 1.0, 1.0, 0.0, "s"), Assumption("Z", "q", 3, 3, 0.0, 0.0, 0.0, "s")])
    assert lone["mde"] is None and "one seed" in lone["note"]
    assert quiet["mde"] is None and "no noise" in quiet["note"]


def test_one_line_per_claim() -> None:
    entries = plan([Assumption("A3", "trace", 3, 3, 0.4, 0.0, 2.9, "src"),
                    Assumption("A3", "accuracy", 3, 3, 0.0, 0.0, 0.014, "src"),
                    Assumption("A4", "trace", 1, 1, 0.4, 0.4, 2.9, "src")])
    out = lines(entries)
    assert len(out) == 2 and out[0].startswith("detectable before running: A3: trace ≥ ") and "accuracy ≥ " in out[0]
    assert "A4: trace none (" in out[1]


def test_the_assumed_noise_gives_the_committed_mdes() -> None:
    """The stated assumptions at the cpu scale reproduce the MDEs recomputed from the committed summaries."""
    path = FIGURES / "verdicts.json"
    if not path.is_file():
        pytest.skip("figures/verdicts.json is not in this checkout")
    committed = json.loads(path.read_text())
    flat = {e["quantity"]: e["mde"] for e in STUDIES["sam-flatness"].detectable("cpu")}  # type: ignore[misc]
    assert flat["test accuracy, SAM − SGD"] == pytest.approx(committed["sam-flatness"]["G1"]["mde"], rel=0.02)
    assert flat["test accuracy, ASAM − SAM"] == pytest.approx(committed["sam-flatness"]["G4"]["mde"], rel=0.02)
    assert flat["λ_max at the end, SAM − SGD"] == pytest.approx(
        committed["sam-flatness"]["G3"]["sam_lower_end"]["mde"], rel=0.02)
    esc = {e["quantity"]: e["mde"] for e in STUDIES["escape"].detectable("cpu")}  # type: ignore[misc]
    a3 = committed["escape"]["A3"]["sa_vs_rs"]
    assert esc["tr(H) at the end, best SA − best RS"] == pytest.approx(a3["trace"]["mde"], rel=0.02)
    assert esc["test accuracy at the end, best SA − best RS"] == pytest.approx(a3["test_acc"]["mde"], rel=0.02)


@pytest.mark.usefixtures("single_thread")
def test_the_reproduce_command_prints_them_before_the_first_stage(tmp_path: Path) -> None:
    from sharpscope_cli.main import app

    out = tmp_path / "escape"
    result = CliRunner().invoke(app, ["reproduce", "escape", "--scale", "smoke", "--out", str(out), "--only",
                                      "random-init-s0"])
    assert result.exit_code == 0, result.output
    text = result.output
    first_stage = text.index("random-init-s0:")
    for claim in ("A1", "A2", "A3", "A4"):
        assert -1 < text.find(f"detectable before running: {claim}: ") < first_stage
    summary = json.loads((out / "escape-summary.json").read_text())
    assert {e["claim"] for e in summary["detectable"]} == {"A1", "A2", "A3", "A4"}
    eos = CliRunner().invoke(app, ["reproduce", "eos", "--scale", "smoke", "--out", str(tmp_path / "eos"), "--only",
                                   "momentum"])
    assert eos.exit_code == 0 and "detectable before running" not in eos.output
