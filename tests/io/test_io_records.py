"""Typed run records: stored records survive a round trip unchanged, readers agree with the raw JSON."""

import json
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from sharpscope.errors import DataError
from sharpscope.io import jsonsafe
from sharpscope.io.jsonsafe import as_number
from sharpscope.io.records import (
    SUMMARY_FIELDS,
    Alignment,
    Divergence,
    Measurement,
    RunSummary,
    SamBatch,
    UpdateReading,
    is_measurement,
    lookup,
    number_at,
    record_kind,
    stored_record,
    typed_record,
)
from sharpscope.io.rundir import RunDirectory, read_measurements
from sharpscope.track.thresholds import bounded_sharpness

# A measurement as the tracker writes it (non-finite values stored as strings), plus a key no reader knows.
STORED = {
    "kind": "measurement", "step": 40, "train_loss": 0.25, "train_acc": 1, "warm_start": True,
    "eigenvalues": [12.5, "NaN", 3.0], "residuals": [1e-9, "Infinity", 2e-9], "converged": False,
    "hvps": 31, "seconds": 0.01, "lanczos_steps": 12, "preconditioned_eigenvalues": None,
    "trace": {"estimate": 40.0, "stderr": "NaN", "method": "hutchpp"},
    "grad_norm": 0.5, "thresholds": {"rule": "gd_edge", "edge": 20.0},
    "cost": {"eval_seconds": 0.1, "hvps": 41, "seconds": 0.3}, "settings": {"k": 3, "seed": 0},
    "future_key": {"anything": ["kept", 1]},
}


def test_a_stored_measurement_round_trips_byte_for_byte_and_decodes_its_numbers() -> None:
    m = Measurement.from_json(STORED)
    assert m.to_json() == STORED
    assert jsonsafe.dumps(m.to_json()) == jsonsafe.dumps(STORED)  # same key order, same text on disk
    assert m.step == 40 and m.lambda_max == 12.5 and math.isnan(m.eigenvalues[1]) and m.residuals[1] == math.inf
    assert m.train_acc == 1 and isinstance(m.train_acc, int)  # numbers are not rewritten (1 stays 1, not 1.0)
    assert m.trace_estimate == 40.0 and math.isnan(m.trace["stderr"])
    assert m.total_hvps == 41 and m.total_seconds == pytest.approx(0.3) and m.warm_start is True
    assert (m.hvps, m.seconds, m.lanczos_steps) == (31, 0.01, 12)  # Lanczos' own cost, typed
    assert m.extra == {"future_key": {"anything": ["kept", 1]}}
    assert (m.edge, m.gd_edge, m.threshold_rule, m.cost_hvps, m.trace_per_param) == (20.0, None, "gd_edge", 41, None)
    assert m.preconditioned_eigenvalues is None and m.preconditioned_lambda_max is None


def test_the_nested_readings_of_a_measurement_have_properties() -> None:
    """tr(H)'s stderr, the i-th eigenvalue, the edges, a sharpness measure's value and the packed test predictions,
    None where the record lacks them."""
    m = Measurement.from_json({**STORED, "thresholds": {"rule": "sam_edge", "edge": 20.0, "gd_edge": 40.0},
                               "sharpness": {"jacobian": {"value": 7.5, "stderr": 0.0}, "sam": None},
                               "test_correct": "AAE="})
    assert math.isnan(m.trace_stderr) and m.eigenvalue(0) == 12.5 and m.eigenvalue(2) == 3.0
    assert math.isnan(m.eigenvalue(1)) and m.eigenvalue(3) is None and m.eigenvalue(-1) is None
    assert m.edge == 20.0 and m.gd_edge == 40.0 and m.test_correct == "AAE="
    assert m.sharpness_value("jacobian") == 7.5 and m.sharpness_value("sam") is None
    assert m.sharpness_value("fisher") is None
    bare = Measurement(step=0)
    assert bare.trace_stderr is bare.edge is bare.gd_edge is bare.test_correct is bare.eigenvalue(0) is None


def test_a_record_made_in_code_writes_kind_step_and_only_what_it_holds() -> None:
    m = Measurement(step=3, eigenvalues=(2.0, math.inf), extra={"note": "x"})
    assert m.to_json() == {"kind": "measurement", "step": 3, "eigenvalues": [2.0, "Infinity"], "note": "x"}
    assert Measurement.from_json(m.to_json()) == m
    # a record without a kind is a measurement; the kind is not added on the way back
    bare = {"step": 1, "eigenvalues": [1.0]}
    assert record_kind(bare) == "measurement" and is_measurement(bare)
    assert Measurement.from_json(bare).to_json() == bare


def test_alignment_records_round_trip_and_kinds_are_checked() -> None:
    stored = {"kind": "alignment", "step": 5, "update_norm": 0.5, "update_cos": None, "update_fraction": "NaN"}
    a = Alignment.from_json(stored)
    assert a.update_norm == 0.5 and a.update_cos is None and math.isnan(a.update_fraction)
    assert a.to_json() == stored and not is_measurement(stored)
    with pytest.raises(DataError, match="'alignment' record is not a measurement"):
        Measurement.from_json(stored)
    with pytest.raises(DataError, match="integer 'step'"):
        Measurement.from_json({"kind": "measurement", "step": "3"})


def test_dotted_keys_read_numbers_and_give_nan_for_anything_else() -> None:
    assert lookup(STORED, "thresholds.rule") == "gd_edge" and lookup(STORED, "eigenvalues.5") is None
    assert number_at(STORED, "eigenvalues.0") == 12.5 and math.isnan(number_at(STORED, "eigenvalues.1"))
    assert number_at(STORED, "residuals.1") == math.inf
    for key in ("thresholds.rule", "converged", "trace.estimate.x", "missing", "eigenvalues.x", "future_key"):
        assert math.isnan(number_at(STORED, key)), key


def test_as_number_reads_real_numbers_and_the_stored_strings_and_nothing_else() -> None:
    """Python's and NumPy's real scalars read as the float of their value (exact for these), the three stored
    non-finite strings decoded; booleans (Python's and NumPy's), other strings, None, containers and tensors NaN."""
    read = [(3, 3.0), (-2.5, -2.5), (Fraction(1, 4), 0.25), (np.float32(0.375), 0.375), (np.float64(-1.5), -1.5),
            (np.int64(7), 7.0), (np.float16(0.5), 0.5), (math.inf, math.inf), ("Infinity", math.inf),
            ("-Infinity", -math.inf)]
    for value, expected in read:
        got = as_number(value)
        assert type(got) is float and got == expected, (value, got)
    assert math.isnan(as_number("NaN")) and math.isnan(as_number(math.nan)) and math.isnan(as_number(np.float32("nan")))
    refused = [True, False, np.bool_(True), "1.5", "nan", "inf", "", None, [1.0], (1.0,), {"value": 1.0},
               torch.tensor(1.0), torch.tensor([2.0]), np.array([1.0]), 1 + 2j]
    for value in refused:
        assert math.isnan(as_number(value)), value


def test_bounded_sharpness_reads_the_sharpness_the_rule_bounds() -> None:
    assert bounded_sharpness(Measurement.from_json(STORED)) == ("λ_max", 12.5)
    adam = {**STORED, "thresholds": {"rule": "adam_edge", "edge": 3.0}, "preconditioned_eigenvalues": ["Infinity"]}
    assert bounded_sharpness(Measurement.from_json(adam)) == ("λ_max(P⁻¹H)", None)
    adam["preconditioned_eigenvalues"] = [7.0, 1.0]
    assert bounded_sharpness(Measurement.from_json(adam)) == ("λ_max(P⁻¹H)", 7.0)


def test_a_record_made_from_fields_keeps_their_order_and_none_values_and_refuses_unknown_names() -> None:
    fields = {"step": 2, "train_loss": math.nan, "eigenvalues": [3.0, 1.0], "trace": None, "converged": True}
    m = Measurement.made(fields)
    assert m.eigenvalues == (3.0, 1.0) and m.trace is None
    assert list(m.to_json()) == ["kind", "step", "train_loss", "eigenvalues", "trace", "converged"]
    assert m.to_json() == {"kind": "measurement", "step": 2, "train_loss": "NaN", "eigenvalues": [3.0, 1.0],
                           "trace": None, "converged": True}
    assert Measurement.from_json(m.to_json()).to_json() == m.to_json()
    with pytest.raises(TypeError, match="'eigenvalue'"):
        Measurement.made({"step": 2, "eigenvalue": [3.0]})  # a misspelt field is an error, not an extra key
    with pytest.raises(TypeError, match="'kind'"):
        Alignment.made({"kind": "alignment", "step": 0})


@pytest.mark.parametrize("stored", [
    {"kind": "sam_batch", "step": 4, "batch_grad_norm": 1.5, "sam_edge_batch": None, "derived_for": "sam(p=2) over gd",
     "batch_sharpness": {"eigenvalue": "Infinity", "residual": 0.1, "converged": False, "examples": 16, "hvps": 7}},
    {"kind": "diverged", "step": 9, "train_loss": "NaN", "train_acc": None, "batch": "full"},
    {"kind": "alignment", "step": 5, "update_norm": 0.5, "update_cos": [0.5, "NaN"], "update_fraction": 0.25},
    {"kind": "update_curvature", "step": 1, "method": "hvp", "kappa": 2.0, "cost": {"hvps": 1, "forwards": 0}},
])
def test_each_record_kind_is_typed_by_its_kind_and_round_trips(stored: dict) -> None:
    typed = typed_record(stored)
    assert stored["kind"] == type(typed).KIND and typed_record(typed) is typed
    assert typed.to_json() == stored == stored_record(typed) and stored_record(stored) == stored
    assert type(typed).made({k: v for k, v in typed.to_json().items() if k != "kind"}).step == stored["step"]


def test_typed_fields_of_the_other_kinds_decode_their_numbers() -> None:
    batch = SamBatch.from_json({"kind": "sam_batch", "step": 0, "batch_sharpness": {"eigenvalue": "Infinity"}})
    assert batch.batch_lambda_max == math.inf and SamBatch.from_json({"kind": "sam_batch", "step": 0}).batch_lambda_max is None
    assert math.isnan(Divergence.from_json({"kind": "diverged", "step": 3, "train_loss": "NaN"}).train_loss)
    a = Alignment.from_json({"kind": "alignment", "step": 5, "update_cos": [0.5, "-Infinity"]})
    assert a.update_cos == (0.5, -math.inf)
    u = UpdateReading.from_json({"kind": "update_curvature", "step": 1, "cost": {"hvps": 2, "forwards": 3}})
    assert (u.hvps, u.forwards) == (2, 3)
    assert typed_record({"kind": "custom", "step": 1, "x": 2}) is None  # a kind of the caller's own stays a dict
    with pytest.raises(DataError, match="integer 'step'"):
        typed_record({"kind": "diverged"})


def test_a_summary_keeps_the_summary_fields_of_its_last_measurement_and_marks_a_repeat_last() -> None:
    m = Measurement.from_json(STORED)
    part = m.summary_part()
    assert list(part) == [k for k in SUMMARY_FIELDS if k in STORED] and part["eigenvalues"] == [12.5, "NaN", 3.0]
    stored = {"status": "completed", "step": 40, "final": part, "measurements": 1, "run_dir": "r"}
    s = RunSummary.from_json(stored)
    assert s.final_measurement is not None and s.final_measurement.lambda_max == 12.5
    again = s.returned_again()
    assert again.already_complete is True and again.to_json() == {**stored, "already_complete": True}
    assert list(again.returned_again().to_json())[-1] == "already_complete" and s.to_json() == stored


def test_read_measurements_types_a_run_directory_in_step_order(tmp_path: Path) -> None:
    run = RunDirectory(tmp_path / "run")
    run.create({"model": {"name": "mlp"}})
    for rec in [{**STORED, "step": 10}, {"kind": "alignment", "step": 0, "update_norm": 1.0},
                {"kind": "measurement", "step": 0, "eigenvalues": [1.0]}, {"kind": "diverged", "step": 11}]:
        run.append_metric(rec)
    ms = read_measurements(run.path)
    assert [m.step for m in ms] == [0, 10]
    stored = [json.loads(line) for line in run.metrics_path.read_text().splitlines()]
    del stored[0]["previous_sha256"], stored[0]["record_sha256"]  # the line's checksums, not part of the record
    assert ms[1].to_json() == stored[0]  # what is on disk comes back unchanged
