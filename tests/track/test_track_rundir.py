"""Run directory: refusal to overwrite, force=True, config mismatch, strict fsynced records, resume truncation."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

from sharpscope.errors import ConfigError
from sharpscope.io.jsonsafe import dumps
from sharpscope.io.migrations import stamped
from sharpscope.models import ModelSpec
from sharpscope.track import RunDirectory, as_float, config_differences

CONFIG = {"model": {"name": "mlp", "kwargs": {"widths": [4]}}, "optimizer_kwargs": {"lr": 0.01}, "steps": 10}
SPEC = ModelSpec("mlp", {"in_features": 3, "num_classes": 2, "widths": [4]})


def strict_lines(path: Path) -> list[dict]:
    """Every line parsed as strict JSON (NaN/Infinity tokens are an error)."""
    def refuse(token: str) -> None:
        raise AssertionError(f"non-standard token {token}")

    text = path.read_text()
    assert text.endswith("\n")
    return [json.loads(line, parse_constant=refuse) for line in text.splitlines()]


def test_new_then_same_config_resumes_and_other_config_is_refused(tmp_path: Path) -> None:
    run = RunDirectory(tmp_path / "run")
    assert run.create(CONFIG) == "new"
    assert json.loads(run.config_path.read_text()) == stamped(CONFIG)  # with the run-directory format version
    assert RunDirectory(tmp_path / "run").create(json.loads(json.dumps(CONFIG))) == "resume"
    other = {**CONFIG, "optimizer_kwargs": {"lr": 0.02}}
    with pytest.raises(ConfigError, match=r"different configuration.*optimizer_kwargs\.lr.*pass force=True") as info:
        RunDirectory(tmp_path / "run").create(other)
    assert info.value.argument == "force"
    assert json.loads(run.config_path.read_text()) == stamped(CONFIG)  # untouched


def test_a_field_added_since_the_run_counts_as_its_default(tmp_path: Path) -> None:
    """A run made before a config field existed resumes when the field is at its default (and its
    stored config gains the field); any other value of the field is a different run."""
    run = RunDirectory(tmp_path / "run")
    run.create(CONFIG)
    newer = {**CONFIG, "keep_checkpoints": False}
    with pytest.raises(ConfigError, match="keep_checkpoints"):
        RunDirectory(tmp_path / "run").create({**CONFIG, "keep_checkpoints": True}, defaults={"keep_checkpoints": False})
    with pytest.raises(ConfigError, match="keep_checkpoints"):
        RunDirectory(tmp_path / "run").create(newer)  # without defaults an absent key is a difference
    assert RunDirectory(tmp_path / "run").create(newer, defaults={"keep_checkpoints": False}) == "resume"
    assert json.loads(run.config_path.read_text()) == stamped(newer)


def test_a_foreign_non_empty_directory_is_refused_without_force(tmp_path: Path) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("precious")
    with pytest.raises(ConfigError, match="pass force=True") as info:
        RunDirectory(folder).create(CONFIG)
    assert info.value.argument == "force"
    assert not (folder / "config.json").exists()
    assert RunDirectory(tmp_path / "empty").create(CONFIG) == "new"  # a missing folder is fine


def test_force_replaces_the_run_and_leaves_other_files(tmp_path: Path) -> None:
    run = RunDirectory(tmp_path / "run")
    run.create(CONFIG)
    run.append_metric({"step": 0, "x": 1.0})
    run.save_checkpoint(0, SPEC.build(), spec=SPEC, state={})
    run.write_summary({"status": "completed"})
    (run.path / "notes.txt").write_text("kept")
    other = {**CONFIG, "steps": 20}
    fresh = RunDirectory(run.path)
    assert fresh.create(other, force=True) == "new"
    assert json.loads(run.config_path.read_text()) == stamped(other)
    assert not run.metrics_path.exists() and not run.summary_path.exists() and fresh.checkpoints() == []
    assert (run.path / "notes.txt").read_text() == "kept"
    assert fresh.append_metric({"step": 0, "x": 2.0})  # (0) is free again


def test_records_are_strict_json_fsynced_and_never_duplicated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = RunDirectory(tmp_path / "run")
    run.create(CONFIG)
    synced: list[str] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}") if os.path.exists(f"/proc/self/fd/{fd}") else str(fd))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    records = [
        {"step": 0, "eigenvalues": [3.5, float("nan")], "loss": float("inf"), "t": torch.tensor([1.0, -math.inf])},
        {"step": 5, "loss": -float("inf"), "nested": {"a": (1, 2)}},
        {"kind": "diverged", "step": 5, "loss": float("nan")},
    ]
    for i, rec in enumerate(records):
        assert run.append_metric(rec)
        lines = strict_lines(run.metrics_path)  # after each append the file is complete, strict JSON
        assert len(lines) == i + 1
        assert len(synced) == i + 1
    if synced[0].startswith("/"):
        assert all(Path(s).name == "metrics.jsonl" for s in synced)
    first, second, third = strict_lines(run.metrics_path)
    assert first["eigenvalues"] == [3.5, "NaN"] and first["loss"] == "Infinity" and first["t"] == [1.0, "-Infinity"]
    assert math.isnan(as_float(first["eigenvalues"][1])) and as_float(second["loss"]) == -math.inf
    assert second["nested"] == {"a": [1, 2]} and third["kind"] == "diverged"
    # a second record with the same (kind, step) is not written, even from a new object
    assert not run.append_metric({"step": 5, "loss": 1.0})
    assert not RunDirectory(run.path).append_metric({"step": 0})
    assert len(strict_lines(run.metrics_path)) == 3
    with pytest.raises(ConfigError, match="integer 'step'"):
        run.append_metric({"loss": 1.0})


def test_resume_keeps_exactly_the_records_up_to_the_checkpoint(tmp_path: Path) -> None:
    run = RunDirectory(tmp_path / "run")
    run.create(CONFIG)
    model = SPEC.build()
    for step in range(0, 30, 5):
        run.append_metric({"step": step, "value": step / 3})
        if step in (10, 20):
            run.save_checkpoint(step, model, spec=SPEC, state={"optimizer": {"m": torch.ones(2) * step}})
    assert [s for s, _ in run.checkpoints()] == [20]  # older checkpoints are deleted
    with open(run.metrics_path, "a") as f:  # a line torn by a kill
        f.write('{"step": 30, "val')
    (run.checkpoint_dir / ".step-00000030.pt.abc.tmp").write_bytes(b"partial")
    run.write_summary({"status": "completed"})

    again = RunDirectory(run.path)
    assert again.create(CONFIG) == "resume"
    assert again.prepare_resume() == 20
    assert [r["step"] for r in strict_lines(again.metrics_path)] == [0, 5, 10, 15, 20]
    assert not list(again.checkpoint_dir.glob(".*.tmp")) and not again.summary_path.exists()
    assert again.has_metric("measurement", 20) and not again.has_metric("measurement", 25)
    assert again.append_metric({"step": 25, "value": 1.0})
    raw = again.load_checkpoint()
    assert raw is not None and raw.spec == SPEC and raw.extra["step"] == 20
    assert torch.equal(raw.extra["optimizer"]["m"], torch.full((2,), 20.0))


def test_resume_without_a_checkpoint_starts_over_and_a_corrupt_middle_line_is_noted(tmp_path: Path) -> None:
    run = RunDirectory(tmp_path / "run")
    run.create(CONFIG)
    run.append_metric({"step": 0})
    assert RunDirectory(run.path).prepare_resume() is None
    assert run.metrics_path.read_text() == ""
    run.metrics_path.write_text('{"step": 0}\nnot json\n{"step": 5}\n')
    again = RunDirectory(run.path)
    assert again.prepare_resume() is None  # no checkpoint: everything is recomputed from the start
    assert run.metrics_path.read_text() == "" and any("line 2" in note for note in again.notes)


def test_a_second_writer_is_refused_and_strict_dumps(tmp_path: Path) -> None:
    run = RunDirectory(tmp_path / "run")
    with run.lock(), pytest.raises(ConfigError, match="another process"), RunDirectory(tmp_path / "run").lock():
        pass
    with RunDirectory(tmp_path / "run").lock():  # released
        pass
    assert dumps({"a": float("nan")}) == '{"a": "NaN"}'
    assert config_differences({"a": {"b": 1, "c": 2}}, {"a": {"b": 1, "c": 3}, "d": 0}) == ["a.c", "d"]
