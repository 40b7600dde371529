"""A training run's ``log`` sinks (CSV, TensorBoard, W&B): read back, and a resumed run holds each step once."""

from __future__ import annotations

import csv
import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sharpscope.errors import ConfigError
from sharpscope.track import RunDirectory, TrainConfig, flatten_record, train
from sharpscope.track.logs import check_logs, parse_log
from sharpscope.track.sinks import WandbSink
from sharpscope.track.tags import readable_scalars
from tests.track.test_track_runner import tiny

pytestmark = pytest.mark.usefixtures("single_thread")


class Crash(Exception):
    pass


def crash_at_7(step: int, total: int, record: dict | None) -> None:
    if step == 7:
        raise Crash


def csv_rows(path: Path) -> list[dict[str, str]]:
    """The CSV's rows without wall-clock columns."""
    with open(path, newline="") as f:
        return [{k: v for k, v in row.items() if "seconds" not in k} for row in csv.DictReader(f)]


def tensorboard_scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar TensorBoard reads from ``logdir``, by tag, ``(step, value)`` in step order (wall clock left out)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: sorted((e.step, e.value) for e in events.Scalars(tag))
            for tag in events.Tags()["scalars"] if tag != "cost/seconds"}


def test_a_resumed_run_logs_the_rows_and_scalars_of_an_uninterrupted_run(tmp_path: Path) -> None:
    """Killed (an exception at step 7, after the checkpoint at 4 and the measurement at 6), then resumed:
    the CSV and the TensorBoard scalars equal an uninterrupted run's, each step once."""
    pytest.importorskip("tensorboard")

    def cfg(name: str) -> TrainConfig:
        return tiny(alignment=True, trace=True, trace_matvecs=6,
                    log=[f"csv:{tmp_path / name}.csv", f"tensorboard:{tmp_path / name}-tb"])

    train(cfg("ref"), tmp_path / "ref")
    with pytest.raises(Crash):
        train(cfg("run"), tmp_path / "run", progress=crash_at_7)
    before = tensorboard_scalars(tmp_path / "run-tb")
    assert [s for s, _ in before["sharpness/lambda_max"]] == [0, 3, 6]  # step 6 is recomputed after the resume
    summary = train(cfg("run"), tmp_path / "run")
    assert summary.resumed_from_step == 4

    rows, reference_rows = csv_rows(tmp_path / "run.csv"), csv_rows(tmp_path / "ref.csv")
    assert rows == reference_rows
    assert [(r["kind"], r["step"]) for r in rows] == [
        (r["kind"], str(r["step"])) for r in RunDirectory(tmp_path / "run").read_metrics()]
    scalars, reference = tensorboard_scalars(tmp_path / "run-tb"), tensorboard_scalars(tmp_path / "ref-tb")
    assert scalars == reference
    assert [s for s, _ in scalars["sharpness/lambda_max"]] == [0, 3, 6, 9, 12]
    records = [r for r in RunDirectory(tmp_path / "ref").read_metrics() if r["kind"] == "measurement"]
    assert scalars["sharpness/lambda_max"] == [(r["step"], float(np.float32(r["eigenvalues"][0]))) for r in records]
    assert scalars["trace"] == [(r["step"], float(np.float32(r["trace"]["estimate"]))) for r in records]
    assert scalars["sharpness/edge"] == [(r["step"], float(np.float32(2 / 0.5))) for r in records]


def test_tensorboard_shows_readable_charts_constants_once_and_an_edge_overlay(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.custom_scalar import layout_pb2

    cfg = tiny(steps=6, log=[f"tensorboard:{tmp_path / 'tb'}"])
    train(cfg, tmp_path / "run")
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"sharpness/lambda_max", "sharpness/lambda_2", "sharpness/edge", "loss/train", "loss/test",
            "accuracy/train", "grad_norm", "lanczos/residual"} <= tags
    assert not any(tag.startswith(("settings", "measurement/", "thresholds")) for tag in tags)  # constants are no charts
    texts = {tag: events.Tensors(tag) for tag in events.Tags()["tensors"] if tag.startswith("run/")}
    assert sorted(texts) == ["run/config/text_summary", "run/settings/text_summary"]
    assert all(len(found) == 1 for found in texts.values())  # written once, not per record
    settings = texts["run/settings/text_summary"][0].tensor_proto.string_val[0].decode()
    assert "| settings.probe_examples | 64 |" in settings and "| thresholds.lr | 0.5 |" in settings
    assert "| optimizer_kwargs.lr | 0.5 |" in texts["run/config/text_summary"][0].tensor_proto.string_val[0].decode()
    assert events.PluginTagToContent("hparams")  # the config in the HPARAMS dashboard
    stored = events.Tensors("custom_scalars__config__")
    assert len(stored) == 1
    layout = layout_pb2.Layout.FromString(stored[0].tensor_proto.string_val[0])
    charts = {chart.title: list(chart.multiline.tag) for category in layout.category for chart in category.chart}
    assert charts["λ_max and its edge"][:2] == ["sharpness/lambda_max", "sharpness/edge"]


def test_log_entries_are_checked_and_may_change_on_resume(tmp_path: Path) -> None:
    assert parse_log("csv:a/b.csv") == ("csv", "a/b.csv")
    for bad in ("tensorboard", "mlflow:x", "csv:", 3):
        with pytest.raises(ConfigError, match="KIND:TARGET") as info:
            parse_log(bad)
        assert info.value.argument == "log"
    with pytest.raises(ConfigError, match="csv more than once"):
        check_logs(["csv:a.csv", "csv:b.csv"])
    with pytest.raises(ConfigError, match="log entry 'tb:x'"):
        tiny(log=["tb:x"])
    cfg = tiny(steps=3)
    with pytest.raises(Crash):
        train(cfg, tmp_path / "run", progress=lambda step, total, record: crash_at_7(step + 6, total, record))
    resumed = train(tiny(steps=3, log=[f"csv:{tmp_path / 'late.csv'}"]), tmp_path / "run")  # a sink added on resume
    assert resumed.resumed_from_step == 0 and resumed.status == "completed"
    assert RunDirectory(tmp_path / "run").read_config()["log"] == [f"csv:{tmp_path / 'late.csv'}"]
    rows = csv_rows(tmp_path / "late.csv")  # caught up from the kept records, then continued
    assert [(r["kind"], r["step"]) for r in rows] == [("measurement", "0"), ("measurement", "3")]


class FakeWandbRun:
    """What a W&B run is given: logged rows, its summary and config."""

    def __init__(self, summary: dict[str, Any] | None = None) -> None:
        self.logged: list[dict[str, float]] = []
        self.summary: dict[str, Any] = dict(summary or {})
        self.config = FakeConfig()

    def define_metric(self, name: str, **kwargs: Any) -> None:
        pass

    def log(self, data: dict[str, float]) -> None:
        self.logged.append(dict(data))


class FakeConfig(dict):
    def update(self, values: Any = (), **kwargs: Any) -> None:  # wandb's signature takes allow_val_change
        super().update(values)


RECORDS = [{"kind": "measurement", "step": 0, "eigenvalues": [3.0], "settings": {"seed": 0}},
           {"kind": "alignment", "step": 0, "update_norm": 0.5},
           {"kind": "measurement", "step": 5, "eigenvalues": [3.5], "settings": {"seed": 0}},
           {"kind": "alignment", "step": 5, "update_norm": 0.25},
           {"kind": "measurement", "step": 10, "eigenvalues": [4.0], "settings": {"seed": 0}}]


def test_wandb_skips_the_steps_its_run_already_holds_when_a_run_resumes() -> None:
    """A run that logged up to the measurement at step 5 and is resumed from step 0 (its kept records
    caught up, the rest sent again) logs every record once, in order."""
    first = FakeWandbRun()
    sink = WandbSink(first)
    for record in RECORDS[:3]:
        sink(record)
    assert first.config == {"settings.seed": 0} and first.summary["sharpscope/last_step"] == 5
    resumed = FakeWandbRun(first.summary)  # wandb.init(id=..., resume="allow") brings the summary back
    sink = WandbSink(resumed)
    sink.catch_up(RECORDS[:2], 0)
    sent = [sink(record) for record in RECORDS[2:]]
    assert sent == [False, True, True]
    logged = first.logged + resumed.logged
    assert logged == [{"step": r["step"], **readable_scalars(r)} for r in RECORDS]
    assert logged[0] == {"step": 0, "sharpness/lambda_max": 3.0} and logged[1] == {"step": 0, "alignment/update_norm": 0.5}


def test_a_missing_logging_package_is_one_line_before_any_work(tmp_path: Path) -> None:
    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed")
    with pytest.raises(ConfigError, match=r"log wandb: needs the wandb package: pip install 'sharpscope\[wandb\]'"):
        train(tiny(steps=3, log=["wandb:project"]), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_wandb_offline_run_through_train(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    summary = train(tiny(steps=3, log=["wandb:sharpscope-test"]), tmp_path / "run")
    assert summary.status == "completed"
    assert list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))


def test_train_cli_takes_log_entries(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "sharpscope"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "run"
    done = subprocess.run([str(script), "train", "eos-gd", "--scale", "smoke", "--out", str(out), "--set", "steps=5",
                           "--log", f"csv:{tmp_path / 'm.csv'}"], env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    records = RunDirectory(out).read_metrics()
    with open(tmp_path / "m.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(records) and all(
        math.isclose(float(row["eigenvalues.0"]), flatten_record(rec)["eigenvalues.0"], rel_tol=0, abs_tol=0)
        for row, rec in zip(rows, records) if rec["kind"] == "measurement")
    bad = subprocess.run([str(script), "train", "eos-gd", "--out", str(tmp_path / "x"), "--log", "tb:dir"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "tensorboard:DIR" in bad.stderr
    assert not (tmp_path / "x").exists()


def test_tensorboard_catch_up_drops_later_steps_and_fills_what_a_kill_cut_off(tmp_path: Path) -> None:
    """Before the kill: measurements at 0, 3, 6 reached TensorBoard, the alignment record at 3 reached only
    the JSONL. Resumed from the checkpoint at 3: step 6 goes, the alignment at 3 is written, nothing twice."""
    pytest.importorskip("tensorboard")
    from sharpscope.track import TensorBoardSink

    def measurement(step: int, lam: float) -> dict[str, Any]:
        return {"kind": "measurement", "step": step, "eigenvalues": [lam], "train_loss": 1.0 / (step + 1),
                "settings": {"seed": 0}}

    alignment = {"kind": "alignment", "step": 3, "update_norm": 0.5}
    before = TensorBoardSink(tmp_path / "tb")
    for record in (measurement(0, 1.0), measurement(3, 2.0), measurement(6, 3.0)):
        before(record)
    before.close()
    after = TensorBoardSink(tmp_path / "tb")
    after.catch_up([measurement(0, 1.0), measurement(3, 2.0), alignment], 3)
    after(measurement(6, 3.5))
    after.close()
    scalars = tensorboard_scalars(tmp_path / "tb")
    assert scalars == {"sharpness/lambda_max": [(0, 1.0), (3, 2.0), (6, 3.5)],
                       "loss/train": [(0, 1.0), (3, float(np.float32(0.25))), (6, float(np.float32(1 / 7)))],
                       "alignment/update_norm": [(3, 0.5)]}


def test_changing_the_logs_of_a_finished_run_keeps_its_checksums(tmp_path: Path) -> None:
    from sharpscope.io import checksums

    train(tiny(steps=3), tmp_path / "run")
    again = train(tiny(steps=3, log=[f"csv:{tmp_path / 'm.csv'}"]), tmp_path / "run")
    assert again.already_complete
    run = RunDirectory(tmp_path / "run")
    assert run.read_config()["log"] == [f"csv:{tmp_path / 'm.csv'}"]
    assert all(checksums.verify(run.path / name) == "good" for name in ("config.json", "metrics.jsonl", "summary.json"))
