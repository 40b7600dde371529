"""The typed study summary: every committed ``figures/*-summary.json`` round-trips exactly; bad input is refused
in one line."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from sharpscope.errors import DataError
from sharpscope.io import jsonsafe
from sharpscope.io.records import RunSummary
from sharpscope.io.studysummary import StudySummary, read_study_summary

REPO = Path(__file__).resolve().parents[2]
SUMMARIES = sorted((REPO / "figures").glob("*-summary.json"))


@pytest.mark.parametrize("path", SUMMARIES, ids=[p.name for p in SUMMARIES])
def test_every_committed_study_summary_round_trips_to_the_byte(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    stored = jsonsafe.loads(text)
    summary = read_study_summary(path)
    assert summary.to_json() == stored and summary.to_text() == text
    assert list(summary.to_json()) == list(stored)  # the stored key order
    assert all(isinstance(s, RunSummary) for s in summary.stages.values())
    assert summary.stages.keys() == stored["stages"].keys() and summary.checks == tuple(stored["checks"])


def test_the_repository_holds_summaries_to_round_trip() -> None:
    assert len(SUMMARIES) >= 9


def test_a_summary_made_in_code_decodes_and_writes_the_stored_form() -> None:
    """Non-finite numbers are floats in memory and strings on disk; ``data_root`` and ``detectable`` are left out
    when None, kept when set; an unknown key survives a round trip in ``extra``."""
    stage = RunSummary.from_json({"status": "diverged", "step": 3, "final": {"train_loss": "NaN"}})
    made = StudySummary(study="s", scale="smoke", checks=("E1",), stages={"a": stage}, results={"x": math.inf})
    assert list(made.to_json()) == ["study", "scale", "checks", "data", "stages", "results"]
    assert made.to_json()["results"] == {"x": "Infinity"} and made.to_json()["checks"] == ["E1"]
    assert made.diverged == ["a"] and math.isnan(stage.final_measurement.train_loss)
    back = StudySummary.from_json(jsonsafe.loads(made.to_text()))
    assert back.results == {"x": math.inf} and back.to_json() == made.to_json()
    stored = {**made.to_json(), "detectable": [{"mde": "NaN"}], "note": [1, 2]}
    again = StudySummary.from_json(stored)
    assert math.isnan(again.detectable[0]["mde"]) and again.extra == {"note": [1, 2]}
    assert again.to_json() == stored


@pytest.mark.parametrize("stored, problem", [
    ([1, 2], "must be a JSON object, got list"),
    ({"scale": "cpu"}, "needs a string 'study' and 'scale'"),
    ({"study": "s", "scale": "cpu", "stages": [1]}, "'stages' and 'results' must be JSON objects"),
    ({"study": "s", "scale": "cpu", "checks": "A3"}, "'checks' must be a list of claim names, got 'A3'"),
    ({"study": "s", "scale": "cpu", "data": [1]}, "'data' must be a JSON object or null"),
    ({"study": "s", "scale": "cpu", "stages": {"a": {"status": 3}}}, "needs a string 'status'"),
])
def test_a_malformed_summary_is_refused_in_one_line(stored: object, problem: str, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=problem) as info:
        StudySummary.from_json(stored)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)
    path = tmp_path / "x-summary.json"
    path.write_text(json.dumps(stored))
    with pytest.raises(DataError, match=f"^{re.escape(str(path))}: not a study summary") as info:
        read_study_summary(path)
    assert "\n" not in str(info.value)
