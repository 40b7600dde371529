"""The typed run summary: a stored ``summary.json`` read and written back unchanged, key for key."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from sharpscope.errors import DataError
from sharpscope.io.jsonsafe import dumps, loads
from sharpscope.io.records import Measurement, RunSummary
from sharpscope.io.rundir import RunDirectory, read_summary

STORED = {
    "status": "diverged", "step": 7, "steps_requested": 12, "recipe": "tiny", "scale": None, "diverged_at_step": 7,
    "nonfinite_loss": "NaN", "measurements": 3,
    "final": {"step": 6, "eigenvalues": [4.5, "Infinity"], "train_loss": 0.25, "test_acc": 0.5,
              "thresholds": {"rule": "gd", "edge": 4.0}},
    "max_sharpness": {"value": 4.5, "step": 6}, "first_step_at_or_above_edge": 6, "hvps_total": 90,
    "measure_seconds_total": 1.5, "update_curvature": None,
    "session": {"resumed_from_step": 4, "seconds": 2.0, "notes": ["repaired a torn line"]},
    "data": {"test": {"examples": 32}}, "sharding": None, "init": None, "checkpoint": "c/step-7.pt",
    "run_dir": "/runs/x", "added_later": [1, 2],
}


def test_a_stored_summary_round_trips_with_its_key_order() -> None:
    older = {k: v for k, v in STORED.items() if k not in ("sharding", "init", "update_curvature")}
    for stored in (STORED, older, dict(reversed(list(STORED.items())))):
        back = RunSummary.from_json(stored).to_json()
        assert back == stored and list(back) == list(stored)


def test_typed_fields_decode_the_stored_numbers() -> None:
    s = RunSummary.from_json(STORED)
    assert s.status == "diverged" and math.isnan(s.nonfinite_loss or 0.0) and s.extra == {"added_later": [1, 2]}
    assert (s.seconds, s.resumed_from_step, s.notes, s.test_examples) == (2.0, 4, ["repaired a torn line"], 32)
    final = s.final_measurement
    assert isinstance(final, Measurement) and final.lambda_max == 4.5 and final.eigenvalues == (4.5, math.inf)
    assert RunSummary.from_json({"status": "completed", "step": 0}).final_measurement is None
    partial = RunSummary.from_json({"status": "completed", "step": 4, "final": {"eigenvalues": [2.0]}}).final_measurement
    assert partial is not None and (partial.step, partial.lambda_max) == (4, 2.0)


def test_a_summary_made_in_code_writes_every_field_in_order() -> None:
    made = RunSummary(status="completed", step=3, nonfinite_loss=math.inf).to_json()
    assert list(made) == [n for n in list(STORED)[:-1]] and made["nonfinite_loss"] == "Infinity"
    assert "already_complete" not in made
    assert RunSummary(status="completed", step=3, already_complete=True).to_json()["already_complete"] is True


@pytest.mark.parametrize("bad", [{"status": "completed", "step": "3"}, {"status": 1, "step": 3},
                                 {"status": "completed", "step": True}, ["completed", 3]])
def test_a_summary_with_a_mistyped_status_or_step_is_refused(bad: object) -> None:
    with pytest.raises(DataError, match="run summary"):
        RunSummary.from_json(bad)  # type: ignore[arg-type]


def test_a_partial_summary_reads_with_its_fields_missing() -> None:
    s = RunSummary.from_json({"status": "completed", "data": {"test": {"examples": 20}}})
    assert (s.step, s.test_examples, s.seconds, s.final_measurement) == (None, 20, None, None)
    assert s.to_json() == {"status": "completed", "data": {"test": {"examples": 20}}}


def test_read_summary_of_a_run_directory(tmp_path: Path) -> None:
    assert read_summary(tmp_path) is None
    RunDirectory(tmp_path).write_summary(STORED)
    typed = read_summary(tmp_path)
    assert typed is not None and typed.to_json() == loads(dumps(STORED))


FIGURES = Path(__file__).resolve().parents[2] / "figures"


@pytest.mark.parametrize("path", sorted(FIGURES.glob("*-summary.json")), ids=lambda p: p.stem)
def test_the_committed_study_summaries_read_as_typed_run_summaries(path: Path) -> None:
    """Every stage summary a committed study summary keeps (what ``train`` returned) reads back unchanged, its
    last measurement as a ``Measurement`` with the fields a summary keeps."""
    stages = loads(path.read_text(encoding="utf-8")).get("stages") or {}
    for name, stored in stages.items():
        summary = RunSummary.from_json(stored)
        assert summary.to_json() == stored and list(summary.to_json()) == list(stored), name
        final = summary.final_measurement
        assert (final is None) == (not stored.get("final")), name
        if final is not None:  # the runner keeps the fields of SUMMARY_FIELDS, in that order
            kept = {k: v for k, v in final.summary_part().items() if k in stored["final"]}
            assert list(kept.items()) == list(stored["final"].items()), name
