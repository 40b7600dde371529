"""Damaged run files, then the same run again: corrupt checkpoints are detected and set aside,
metrics are reconciled with the checkpoint, a torn summary is rebuilt; in every case the final
records equal an uninterrupted run's, or the run refuses in one line saying what is missing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sharpscope.errors import CheckpointError
from sharpscope.io import load_checkpoint, read_checkpoint
from sharpscope.io.jsonsafe import without_timings
from sharpscope.track import RunDirectory, train
from tests.faults.faults_helpers import flip_bit, same_records, tiny

pytestmark = pytest.mark.usefixtures("single_thread")


class Crash(Exception):
    pass


def crash_at(step: int):  # type: ignore[no-untyped-def]
    def progress(t: int, total: int, record: dict | None) -> None:
        if t == step:
            raise Crash
    return progress


def crashed(out: Path, step: int = 7, **overrides) -> RunDirectory:  # type: ignore[no-untyped-def]
    with pytest.raises(Crash):
        train(tiny(**overrides), out, progress=crash_at(step))
    return RunDirectory(out)


def test_a_flipped_exponent_bit_in_the_checkpoint_is_detected_and_recomputed(tmp_path: Path, reference) -> None:
    run = crashed(tmp_path / "run")
    step, path = run.latest_checkpoint()
    assert step == 4
    weight = next(iter(read_checkpoint(path).state_dict.values()))
    flip_bit(path, tensor=weight, bit=30)  # the top exponent bit of the first weight: a wrong λ if it went unseen
    with pytest.raises(CheckpointError, match="corrupt file"):
        load_checkpoint(path)
    summary = train(tiny(), run.path)
    assert summary.status == "completed" and same_records(run, reference(tiny()))
    assert any("corrupt file" in note and path.name in note for note in summary.notes)
    assert (path.parent / (path.name + ".corrupt")).is_file()  # kept for inspection, never read again


def test_resume_falls_back_to_the_previous_good_checkpoint(tmp_path: Path, reference) -> None:
    run = crashed(tmp_path / "run", step=10, keep_checkpoints=True)
    assert [t for t, _ in run.checkpoints()] == [0, 4, 8]
    flip_bit(run.checkpoints()[-1][1])
    summary = train(tiny(keep_checkpoints=True), run.path)
    assert summary.resumed_from_step == 4
    assert same_records(run, reference(tiny(keep_checkpoints=True)))


def test_a_random_bytes_checkpoint_is_corrupt_not_unsafe(tmp_path: Path, reference) -> None:
    run = crashed(tmp_path / "run")
    path = run.latest_checkpoint()[1]
    path.write_bytes(bytes(torch.randint(0, 256, (path.stat().st_size,), generator=torch.Generator().manual_seed(1),
                                         dtype=torch.uint8).tolist()))
    summary = train(tiny(), run.path)
    notes = " ".join(summary.notes)
    assert "corrupt file" in notes and "unsafe" not in notes and "--unsafe-load" not in notes
    assert same_records(run, reference(tiny()))


@pytest.mark.parametrize("damage", ["truncate-half", "empty", "duplicate-line", "garbage-line", "delete"])
@pytest.mark.parametrize("when", ["finished", "crashed"])
def test_damaged_metrics_are_reconciled_on_resume(tmp_path: Path, reference, damage: str, when: str) -> None:
    out = tmp_path / "run"
    run = crashed(out) if when == "crashed" else RunDirectory(out)
    if when == "finished":
        train(tiny(), out)
    lines = run.metrics_path.read_text().splitlines(keepends=True)
    changed = {"truncate-half": lines[:len(lines) // 2], "empty": [],
               "duplicate-line": lines[:2] + lines[1:],
               "garbage-line": lines[:1] + ['{"kind": "measurement", "st\n'] + lines[2:], "delete": None}[damage]
    if changed is None:
        run.metrics_path.unlink()
    else:
        run.metrics_path.write_text("".join(changed))
    summary = train(tiny(), out)
    expected = reference(tiny())
    assert not summary.already_complete and summary.status == "completed"
    assert same_records(run, expected)
    assert summary.measurements == sum(r.get("kind", "measurement") == "measurement" for r in expected)
    assert summary.notes or when == "crashed"


@pytest.mark.parametrize("damage", [b"", b'{"status": "compl', b"\xff\xfe garbage"])
def test_a_torn_or_corrupt_summary_is_rebuilt(tmp_path: Path, reference, damage: bytes) -> None:
    out = tmp_path / "run"
    first = train(tiny(), out)
    run = RunDirectory(out)
    run.summary_path.write_bytes(damage)
    summary = train(tiny(), out)
    assert not summary.already_complete and summary.status == "completed"
    assert without_timings(summary.final) == without_timings(first.final)
    assert run.read_summary()["measurements"] == first.measurements and same_records(run, reference(tiny()))
    assert train(tiny(), out).already_complete  # rebuilt and recorded: the next rerun trusts it


def test_records_that_cannot_be_replayed_are_refused_naming_them(tmp_path: Path) -> None:
    run = crashed(tmp_path / "run")
    lines = run.metrics_path.read_text().splitlines(keepends=True)
    run.metrics_path.write_text("".join(lines[1:]))  # the record of step 0 is gone
    with pytest.raises(CheckpointError, match=r"lacks 1 record\(s\).*measurement@0"):
        RunDirectory(run.path).prepare_resume(replay=False)
    assert run.metrics_path.read_text() == "".join(lines[1:])  # nothing changed by the refusal


def test_stale_temporary_files_are_cleaned_and_a_folder_of_them_counts_as_empty(tmp_path: Path, reference) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / ".config.json.k2j3.tmp").write_text('{"half')
    (out / ".lock").write_text("")
    summary = train(tiny(), out)
    assert summary.status == "completed" and same_records(RunDirectory(out), reference(tiny()))
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))
    (out / "notes.txt").write_text("mine")  # a foreign file is never touched
    (out / "checkpoints" / ".step-00000012.pt.x1.tmp").write_bytes(b"\x80")
    assert train(tiny(), out).already_complete
    assert (out / "notes.txt").read_text() == "mine" and not list((out / "checkpoints").glob(".*.tmp"))
