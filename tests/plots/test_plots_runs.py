"""Reading run directories for figures: records, decoded non-finite values, series, clear errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from sharpscope.errors import ConfigError, DataError
from sharpscope.io.records import Divergence
from sharpscope.plots.runs import as_runs, load_run, series, value
from sharpscope.track import RunDirectory


def test_load_run_splits_records_and_reads_config_and_summary(run_dirs: dict[str, Path]) -> None:
    path = run_dirs["gd"]
    run = load_run(path)
    records = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    assert run.label == "gd" and run.path == path
    stored = json.loads((path / "config.json").read_text())
    assert run.config == {k: v for k, v in stored.items() if k != "format_version"} and "format_version" in stored
    assert run.summary is not None and run.summary.status == "completed"
    assert [m.step for m in run.measurements] == [0, 5, 10] == [r["step"] for r in records]
    assert run.events == [] and run.diverged_at is None
    assert load_run(path, label="GD").label == "GD"


def test_series_pulls_dotted_keys_in_step_order(run_dirs: dict[str, Path]) -> None:
    run = load_run(run_dirs["gd"])
    steps, lam2 = series(run, "eigenvalues.1")
    np.testing.assert_array_equal(steps, [0, 5, 10])
    np.testing.assert_array_equal(lam2, [m.eigenvalues[1] for m in run.measurements])
    _, tr = series(run, "trace.estimate")
    np.testing.assert_array_equal(tr, [m.trace_estimate for m in run.measurements])
    _, edge = series(run, "thresholds.edge")
    np.testing.assert_array_equal(edge, 2 / run.config["optimizer_kwargs"]["lr"])
    for missing in ("eigenvalues.2", "nothing", "trace.estimate.0", "thresholds.rule"):
        assert np.isnan(series(run, missing)[1]).all(), missing


def test_diverged_run_has_its_event(run_dirs: dict[str, Path]) -> None:
    run = load_run(run_dirs["diverged"])
    assert run.summary is not None and run.summary.status == "diverged"
    assert run.diverged_at == run.summary.diverged_at_step > 0
    event = run.events[0]
    assert isinstance(event, Divergence) and event.train_loss == math.inf  # decoded string


def test_nonfinite_strings_and_missing_values_and_a_torn_line(tmp_path: Path) -> None:
    rd = RunDirectory(tmp_path / "run")
    rd.create({"model": {"name": "mlp"}, "optimizer_kwargs": {"lr": 0.1}})
    rd.append_metric({"kind": "measurement", "step": 0, "eigenvalues": [3.0, 1.0], "train_loss": float("nan")})
    rd.append_metric({"kind": "measurement", "step": 10, "eigenvalues": None, "train_loss": 0.5})
    rd.append_metric({"kind": "measurement", "step": 5, "eigenvalues": [float("inf")], "train_loss": 1.0})
    with open(rd.metrics_path, "a") as f:
        f.write('{"kind": "measurement", "step": 15, "eigenv')  # killed mid-write
    run = load_run(rd.path)
    assert '"NaN"' in rd.metrics_path.read_text()
    steps, lam = series(run, "eigenvalues.0")
    np.testing.assert_array_equal(steps, [0, 5, 10])
    np.testing.assert_array_equal(lam, [3.0, math.inf, math.nan])
    np.testing.assert_array_equal(series(run, "train_loss")[1], [math.nan, 1.0, 0.5])
    assert math.isnan(value({"a": [1, 2]}, "a.x")) and math.isnan(value({"a": True}, "a"))
    assert value({"a": [1, {"b": 2}]}, "a.1.b") == 2.0


def test_not_a_run_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such folder"):
        load_run(tmp_path / "missing")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ConfigError, match="a file"):
        load_run(tmp_path / "file.txt")
    (tmp_path / "plain").mkdir()
    with pytest.raises(ConfigError, match="no metrics.jsonl and no config.json"):
        load_run(tmp_path / "plain")
    (tmp_path / "plain" / "config.json").write_text('{"lr": NaN}')
    with pytest.raises(ConfigError, match="unreadable run file"):
        load_run(tmp_path / "plain")


def test_as_runs_checks_labels_and_empty_runs(tmp_path: Path, run_dirs: dict[str, Path]) -> None:
    RunDirectory(tmp_path / "empty").create({"model": {"name": "mlp"}})
    with pytest.raises(DataError, match="no measurements recorded"):
        as_runs([tmp_path / "empty"])
    with pytest.raises(DataError, match="no runs"):
        as_runs([])
    with pytest.raises(ConfigError, match="2 label"):
        as_runs([run_dirs["gd"]], labels=["a", "b"])
    runs = as_runs([run_dirs["gd"], load_run(run_dirs["sam"])], labels=["A", "B"])
    assert [r.label for r in runs] == ["A", "B"]
    assert as_runs(str(run_dirs["gd"]))[0].label == "gd"
