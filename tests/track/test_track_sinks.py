"""Each sink writes what the JSONL holds: CSV, TensorBoard (read back with its event reader), W&B, the DataFrame."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from sharpscope.curvature import CurvatureSettings
from sharpscope.errors import ConfigError
from sharpscope.io.jsonsafe import NONFINITE
from sharpscope.losses import mse
from sharpscope.track import (
    CSVSink,
    JSONLSink,
    MultiSink,
    RunDirectory,
    SharpnessTracker,
    TensorBoardSink,
    WandbSink,
    flatten_record,
    metrics_dataframe,
)
from sharpscope.track.tags import readable_scalars

EXTRA = [  # the awkward cases a tracker can emit: non-finite numbers, None, nesting, empty containers
    {"kind": "note", "step": 3, "loss": math.nan, "edge": math.inf, "test_loss": None, "ok": True,
     "nested": {"a": [1, 2.5], "b": {}}, "empty": [], "label": "text"},
]


def tracked_records(sink: Any) -> None:
    """A short real training loop feeding a tracker's records (measure, alignment) to ``sink``."""
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 4, generator=gen), torch.randint(0, 3, (32,), generator=gen)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tracker = SharpnessTracker((x, y), mse, every=2,
                               curvature=CurvatureSettings(k=2, trace_matvecs=12, hvp_mode="rev-rev"), trace=True,
                               alignment=True, sink=sink)
    for step in range(4):
        tracker.maybe_measure(step, model, opt)
        opt.zero_grad()
        mse(model(x), y).backward()
        opt.step()
        tracker.after_step(step, model, opt)
    for record in EXTRA:
        sink(record)


def same(stored: Any, expected: Any) -> bool:
    """A CSV cell against the flattened JSONL value (CSV holds text)."""
    if expected is None:
        return stored == ""
    if isinstance(expected, (bool, str)):
        return stored == str(expected)
    return float(stored) == float(expected)  # repr of a Python float round-trips exactly


@pytest.fixture
def run_with_csv(tmp_path: Path) -> tuple[RunDirectory, Path]:
    run = RunDirectory(tmp_path / "run")
    csv_path = tmp_path / "metrics.csv"
    tracked_records(MultiSink(JSONLSink(run), CSVSink(csv_path)))
    return run, csv_path


def test_csv_holds_every_value_of_the_jsonl(run_with_csv: tuple[RunDirectory, Path]) -> None:
    run, csv_path = run_with_csv
    records = run.read_metrics()
    assert [r["kind"] for r in records] == ["measurement", "alignment", "measurement", "alignment", "note"]
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(records)
    for row, record in zip(rows, records):
        flat = flatten_record(record)
        assert all(same(row[k], v) for k, v in flat.items()), record["kind"]
        assert all(row[k] == "" for k in set(row) - set(flat))  # other kinds' columns stay empty
    assert rows[-1]["loss"] == "NaN" and rows[-1]["nested.a.1"] == "2.5" and rows[-1]["empty"] == "[]"


def test_csv_sink_continues_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    CSVSink(path)({"kind": "a", "step": 0, "x": 1.0})
    CSVSink(path)({"kind": "a", "step": 1, "x": 2.0})  # a resumed run: same header, appended
    CSVSink(path)({"kind": "a", "step": 2, "y": 3.0})  # a new key: header widened, rows kept
    with open(path, newline="") as f:
        assert list(csv.reader(f)) == [["kind", "step", "x", "y"], ["a", "0", "1.0", ""], ["a", "1", "2.0", ""],
                                       ["a", "2", "", "3.0"]]


def test_dataframe_has_one_row_per_record_and_decodes_non_finite(run_with_csv: tuple[RunDirectory, Path]) -> None:
    pytest.importorskip("pandas")
    run, _ = run_with_csv
    records = run.read_metrics()
    frame = metrics_dataframe(run.path)
    assert len(frame) == len(records) and list(frame["kind"]) == [r["kind"] for r in records]
    for i, record in enumerate(records):
        for key, value in flatten_record(record).items():
            got = frame[key].iloc[i]
            if isinstance(value, str) and value in NONFINITE:
                assert math.isnan(got) if value == "NaN" else got == NONFINITE[value]
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                assert got == value, key
    measures = metrics_dataframe(run, kind="measurement")
    assert list(measures["step"]) == [0, 2]
    assert list(measures["eigenvalues.0"]) == [r["eigenvalues"][0] for r in records if r["kind"] == "measurement"]


def test_tensorboard_holds_every_chart_number_of_the_jsonl(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = RunDirectory(tmp_path / "run")
    tb = TensorBoardSink(tmp_path / "tb")
    tracked_records(MultiSink(JSONLSink(run), tb))
    tb.close()
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    expected: dict[str, list[tuple[int, float]]] = {}
    for record in run.read_metrics():
        for tag, value in readable_scalars(record).items():
            expected.setdefault(tag, []).append((record["step"], value))
    assert set(events.Tags()["scalars"]) == set(expected)
    assert {"sharpness/lambda_max", "sharpness/lambda_2", "trace", "alignment/update_cos_2", "note/nested.a.1"} <= set(expected)
    assert "note/label" not in expected
    for tag, points in expected.items():
        stored = [(e.step, e.value) for e in events.Scalars(tag)]
        want = [(s, float(np.float32(v))) for s, v in points]  # TensorBoard keeps float32
        assert len(stored) == len(want) and all(
            s == ws and (v == wv or (math.isnan(v) and math.isnan(wv))) for (s, v), (ws, wv) in zip(stored, want)), tag


class FakeWandbRun:
    """Records what a W&B run is given."""

    def __init__(self) -> None:
        self.logged: list[dict[str, float]] = []
        self.metrics: list[tuple[str, dict[str, Any]]] = []

    def define_metric(self, name: str, **kwargs: Any) -> None:
        self.metrics.append((name, kwargs))

    def log(self, data: dict[str, float]) -> None:
        self.logged.append(dict(data))


def test_wandb_sink_logs_every_number_of_the_jsonl_against_its_step(tmp_path: Path) -> None:
    run, fake = RunDirectory(tmp_path / "run"), FakeWandbRun()
    tracked_records(MultiSink(JSONLSink(run), WandbSink(fake)))
    assert ("*", {"step_metric": "step"}) in fake.metrics
    records = run.read_metrics()
    assert len(fake.logged) == len(records)
    for logged, record in zip(fake.logged, records):
        want = {"step": record["step"], **readable_scalars(record)}
        assert logged.keys() == want.keys()
        assert all(logged[k] == v or (math.isnan(v) and math.isnan(logged[k])) for k, v in want.items())


def test_wandb_offline_run_receives_the_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    sink = WandbSink(project="sharpscope-test", mode="offline", dir=str(tmp_path))
    try:
        sink({"kind": "measurement", "step": 0, "eigenvalues": [3.0, 1.5]})
        sink({"kind": "measurement", "step": 4, "eigenvalues": [2.0, 1.0], "label": "x"})
        assert sink.run.summary["sharpness/lambda_max"] == 2.0 and sink.run.summary["step"] == 4
    finally:
        sink.close()
    assert list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))


def test_multisink_reaches_every_sink_before_raising(tmp_path: Path) -> None:
    seen: list[dict[str, Any]] = []

    def broken(record: Any) -> None:
        raise OSError("disk full")

    sink = MultiSink(broken, seen.append)
    with pytest.raises(OSError, match="disk full"):
        sink({"kind": "a", "step": 0})
    assert seen == [{"kind": "a", "step": 0}]
    with pytest.raises(ConfigError, match="callables"):
        MultiSink()


def test_numeric_sinks_need_an_integer_step() -> None:
    with pytest.raises(ConfigError, match="integer 'step'"):
        WandbSink(FakeWandbRun())({"kind": "a", "step": "later"})
