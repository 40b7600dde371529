"""The typed readings, pairs, comparisons and results read back every stored one of the committed escape-a3 and
escape-a4 summaries exactly."""

from __future__ import annotations

import json
import math
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from sharpscope.io import jsonsafe
from sharpscope.io.readings import BULKY, A3Results, A4Results, ModelReading, Pair, PairedComparison

FIGURES = Path(__file__).resolve().parents[2] / "figures"


def _results(study: str) -> dict[str, Any]:
    """The stored ``results`` of ``figures/<study>-summary.json`` as the file holds them (non-finite as strings)."""
    path = FIGURES / f"{study}-summary.json"
    if not path.is_file():
        pytest.skip(f"{path.name} is not in this checkout")
    return dict(json.loads(path.read_text(encoding="utf-8"))["results"])


def _at(stored: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    return stored if not path else _at(stored[path[0]], path[1:])


def _stored(record: dict[str, Any]) -> str:
    return jsonsafe.dumps(record)


def test_every_stored_reading_of_both_studies_reads_back_to_the_same_members() -> None:
    a3, a4 = _results("escape-a3"), _results("escape-a4")
    briefs = [*a3["minimizers"].values(), *a4["start"]]
    briefs += [r for form in a4["readings"].values() for rs in form.values() for r in rs]
    briefs += [p[side] for cmp in a3["comparisons"].values() for p in cmp["pairs"] for side in ("sa", "arm")]
    assert len(briefs) == 3 + 3 + 2 * 3 * 3 + 4 * 3 * 2
    brief_fields = [f.name for f in fields(ModelReading) if f.name not in BULKY]
    for stored in briefs:
        back = ModelReading.from_dict(stored).to_dict(brief=True)
        assert list(back) == brief_fields and sorted(stored) == sorted(brief_fields)
        assert json.loads(_stored(back)) == stored


def test_every_stored_pair_reads_back_byte_identical() -> None:
    pairs = [p for cmp in _results("escape-a3")["comparisons"].values() for p in cmp["pairs"]]
    assert len(pairs) == 4 * 3
    for stored in pairs:
        pair = Pair.from_dict(stored)
        assert list(pair.to_dict()) == list(stored) == ["matched", "status", "loss_ratio", "sa", "arm"]
        assert pair.loss_ratio == stored["arm"]["train_loss"] / stored["sa"]["train_loss"]


def test_every_stored_comparison_reads_back_byte_identical() -> None:
    a3, a4 = _results("escape-a3"), _results("escape-a4")
    stored = [cmp[q] for cmp in a3["comparisons"].values() for q in ("trace", "trace_paired", "jacobian_trace",
                                                                      "test_acc")]
    for part in ("comparisons", "at_equal_loss"):
        stored += [cmp[q] for form in a4[part].values() for cmp in form.values() if "skipped" not in cmp
                   for q in ("trace_paired", "trace_per_loss", "jacobian_trace")]
    assert len(stored) == 4 * 4 + 2 * 3 * 3 + 3 * 3  # B = 1 unscaled left its minimizer: not matched
    for one in stored:
        assert _stored(PairedComparison.from_dict(one).to_dict()) == _stored(one)


def test_a_full_reading_keeps_its_bulky_members_and_decodes_non_finite_numbers() -> None:
    stored = {f.name: i for i, f in enumerate(fields(ModelReading))} | {
        "trace_samples": [1.0, "NaN"], "test_correct": {"n": 2, "bits": "gA=="}, "lambda_max": "-Infinity"}
    reading = ModelReading.from_dict(stored)
    assert reading.lambda_max == -math.inf and math.isnan((reading.trace_samples or [])[1])
    assert _stored(reading.to_dict()) == _stored(stored)
    assert list(reading.to_dict(brief=True)) == [k for k in stored if k not in ("trace_samples", "test_correct")]
    assert Pair(reading, reading).to_dict()["arm"] == reading.to_dict(brief=True)  # a pair stores brief readings
    assert ModelReading.from_dict({"train_loss": 0.5}).to_dict(brief=True) == {
        f.name: 0.5 if f.name == "train_loss" else None for f in fields(ModelReading) if f.name not in BULKY}


@pytest.mark.parametrize(("study", "claim", "typed"), [("escape-a3", "A3", A3Results), ("escape-a4", "A4", A4Results)])
def test_the_results_of_both_studies_read_back_exactly(study: str, claim: str, typed: type) -> None:
    """Everything of a study's results but its verdict, the contrasts stored flat and the batches and minimizers
    as integer keys (the committed readings store their members in an older order)."""
    results = _results(study)
    numbers = {k: v for k, v in results.items() if k != claim}
    back = typed.from_dict(results).to_dict()
    assert list(back) == list(numbers) and json.loads(_stored(back)) == numbers
    parts = [("comparisons",)] if claim == "A3" else [(p, f) for p in ("comparisons", "at_equal_loss")
                                                      for f in ("unscaled", "scaled")]
    contrasts = [(_at(back, path), _at(numbers, path)) for path in parts]
    for ours, theirs in contrasts:
        assert [list(c) for c in ours.values()] == [list(c) for c in theirs.values()]  # the stored member order


def test_the_typed_results_hold_records_under_integer_keys() -> None:
    a3, a4 = A3Results.from_dict(_results("escape-a3")), A4Results.from_dict(_results("escape-a4"))
    assert list(a3.minimizers) == [0, 1, 2] and [p.sa.run for p in a3.comparisons["rs"].pairs or []] == [
        "sa-m0", "sa-m1", "sa-m2"]
    assert list(a3.comparisons["rs"].judged) == ["trace", "trace_paired", "jacobian_trace", "test_acc"]
    assert list(a4.readings["scaled"]) == a4.batches == [1, 64, 128]
    assert a4.readings["scaled"][1][0].run == "sa-b1-scaled-m0" and a4.start[2].run == "finetune-m2"
    left = a4.at_equal_loss["unscaled"]["1-128"]
    assert left.judged == {} and left.skipped == "B = 1 left the bad minimizer" and left.steps is None
    assert a4.at_equal_loss["scaled"]["1-128"].steps is not None
