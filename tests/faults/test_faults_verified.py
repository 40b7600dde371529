"""Verified reads: a damaged record is recomputed on resume and refused, in one line naming the file and
the line, by every reader; a finished run's checkpoints are verified on a rerun; a checkpoint that its
manifest does not vouch for is refused; ``sharpscope verify`` reports each problem."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from sharpscope_cli.main import app
from typer.testing import CliRunner

from sharpscope.errors import CheckpointError, ConfigError
from sharpscope.io import checksums, jsonsafe, read_checkpoint, read_measurements, recordlines
from sharpscope.plots.runs import load_run
from sharpscope.track import RunDirectory, train
from sharpscope.track.dataframe import metrics_dataframe
from tests.faults.faults_helpers import ENV, SCRIPT, TIMEOUT, flip_bit, same_records, tiny

pytestmark = pytest.mark.usefixtures("single_thread")


class Crash(Exception):
    pass


def crashed(out: Path, step: int = 7) -> RunDirectory:
    def progress(t: int, total: int, record: dict | None) -> None:
        if t == step:
            raise Crash
    with pytest.raises(Crash):
        train(tiny(), out, progress=progress)
    return RunDirectory(out)


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def damage_record(run: RunDirectory, how: str, line: int = 2) -> None:
    """Change the record on ``line`` (1-based) the way a red team did: a value changed inside valid JSON,
    one flipped bit that leaves the JSON valid (a digit becomes its neighbour), a latin-1 byte."""
    data = run.metrics_path.read_bytes().split(b"\n")
    text = data[line - 1]
    m = re.search(rb'"eigenvalues": \["?-?(\d)', text)
    assert m is not None
    at = m.start(1)
    if how == "value":
        text = text[:at] + (b"7" if text[at:at + 1] != b"7" else b"8") + text[at + 1:]
    elif how == "bit-flip":
        text = text[:at] + bytes([text[at] ^ 1]) + text[at + 1:]
    else:
        text = text.replace(b'"measurement"', b'"measur\xe9ment"', 1)
    data[line - 1] = text
    run.metrics_path.write_bytes(b"\n".join(data))
    if how != "latin-1":
        assert json.loads(text)  # still valid JSON: only the checksum can tell


@pytest.mark.parametrize("how", ["value", "bit-flip", "latin-1"])
@pytest.mark.parametrize("when", ["finished", "crashed"])
def test_a_damaged_record_is_recomputed_on_resume(tmp_path: Path, reference, how: str, when: str) -> None:
    out = tmp_path / "run"
    run = crashed(out) if when == "crashed" else RunDirectory(out)
    if when == "finished":
        train(tiny(), out)
    damage_record(run, how)  # the measurement at step 3, before the checkpoint at step 4
    summary = train(tiny(), out)
    assert not summary.already_complete and summary.status == "completed"
    assert same_records(run, reference(tiny()))
    assert any("line 2" in note for note in summary.notes), summary.notes
    assert recordlines.scan(run.metrics_path.read_bytes()).problems == []


@pytest.mark.parametrize("how", ["value", "bit-flip", "latin-1"])
def test_every_reader_refuses_a_damaged_record_in_one_line_naming_the_file_and_line(tmp_path: Path, how: str) -> None:
    out = tmp_path / "run"
    train(tiny(), out)
    run = RunDirectory(out)
    damage_record(run, how, line=3)
    before = run.metrics_path.read_bytes()
    where = re.escape(f"{run.metrics_path}: line 3: ")
    for read in (lambda: read_measurements(out), lambda: metrics_dataframe(out), lambda: load_run(out),
                 lambda: RunDirectory(out).read_metrics(torn_ok=True),
                 lambda: RunDirectory(out).append_metric({"step": 99})):
        with pytest.raises(CheckpointError, match=where) as info:
            read()
        assert "\n" not in str(info.value)
    code, output = cli("plot", str(out), "--out", str(tmp_path / "fig"))
    assert code == 1 and output.startswith("error: ") and output.count("\n") == 1 and "line 3" in output, output
    assert not list(tmp_path.glob("fig.*")) and run.metrics_path.read_bytes() == before  # nothing written


def test_removed_trailing_records_of_a_finished_run_are_refused_and_recomputed(tmp_path: Path, reference) -> None:
    out = tmp_path / "run"
    train(tiny(), out)
    run = RunDirectory(out)
    lines = run.metrics_path.read_text().splitlines(keepends=True)
    run.metrics_path.write_text("".join(lines[:-1]))  # every remaining line verifies: only the file digest tells
    with pytest.raises(CheckpointError, match="differs from the digest recorded"):
        read_measurements(out)
    assert not train(tiny(), out).already_complete and same_records(run, reference(tiny()))


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "garbage-manifest", "delete-manifest"])
def test_a_rerun_of_a_finished_run_verifies_its_checkpoints(tmp_path: Path, reference, damage: str) -> None:
    out = tmp_path / "run"
    train(tiny(), out)
    run = RunDirectory(out)
    step, final = run.latest_checkpoint()
    assert step == 12
    manifest = run.checkpoint_dir / "SHA256SUMS"
    if damage == "flip":
        flip_bit(final)
    elif damage == "truncate":
        final.write_bytes(final.read_bytes()[:final.stat().st_size // 2])
    elif damage == "delete":
        final.unlink()
    elif damage == "garbage-manifest":
        manifest.write_bytes(b"\x00\xffnot a manifest\n")
    else:
        manifest.unlink()
    summary = train(tiny(), out)
    assert not summary.already_complete and summary.status == "completed"
    assert any(final.name in note for note in summary.notes), summary.notes
    assert same_records(run, reference(tiny())) and checksums.verify(final) == "good"
    assert train(tiny(), out).already_complete  # repaired and recorded: the next rerun trusts it


@pytest.mark.parametrize("manifest", ["garbage", "other-file", "deleted-in-a-run"])
def test_a_checkpoint_its_manifest_does_not_vouch_for_is_refused(tmp_path: Path, manifest: str) -> None:
    out = tmp_path / "run"
    train(tiny(), out)
    path = RunDirectory(out).latest_checkpoint()[1]
    if manifest == "deleted-in-a-run":
        (path.parent / "SHA256SUMS").unlink()
        expected = "is missing, though the run was written with checksums"
    else:
        loose = tmp_path / "loose" / "model.pt"
        loose.parent.mkdir()
        loose.write_bytes(path.read_bytes())
        other = loose.with_name("other.pt")
        other.write_bytes(b"x")
        if manifest == "garbage":
            (loose.parent / "SHA256SUMS").write_bytes(b"zz  model.pt\n\xff\xfe\n")
            expected = "does not record it (2 of its lines are unreadable)"
        else:
            checksums.record(other)
            expected = "does not record it ("
        path = loose
    with pytest.raises(CheckpointError, match=re.escape(f"{path}: cannot be verified: ")) as info:
        read_checkpoint(path)
    assert expected in str(info.value) and "\n" not in str(info.value)
    code, output = cli("probe", str(path), "--data", "mnist1d", "--n", "32")
    assert code == 1 and output.startswith("error: ") and output.count("\n") == 1 and "cannot be verified" in output


def test_probe_of_a_checkpoint_in_a_run_folder_verifies_it(tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(tiny(), out)
    path = RunDirectory(out).latest_checkpoint()[1]
    code, output = cli("probe", str(path), "--data", "mnist1d", "--n", "32", "--json")
    assert code == 0, output
    flip_bit(path)
    code, output = cli("probe", str(path), "--data", "mnist1d", "--n", "32")
    assert code == 1 and output.count("\n") == 1 and "corrupt file" in output and path.name in output, output


def test_verify_reports_intact_runs_and_one_line_per_problem(tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(tiny(), out)
    run = RunDirectory(out)
    code, output = cli("verify", str(out))
    assert code == 0 and output == f"{out}: intact: 5 record(s) and 1 checkpoint(s) verified\n", output
    damage_record(run, "value", line=2)
    final = run.latest_checkpoint()[1]
    flip_bit(final)
    with open(run.metrics_path, "ab") as f:
        f.write(b'{"step": 13, "eigen')  # a torn last line
    files = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    code, output = cli("verify", str(out))
    lines = output.splitlines()
    assert code == 1 and len(lines) == 4, output
    assert lines[0].startswith(f"{run.metrics_path}: line 2: checksum mismatch")
    assert lines[1].startswith(f"{run.metrics_path}: line 6: cut short")
    assert lines[2].startswith(f"{run.metrics_path}: corrupt file")  # against the finished run's SHA256SUMS
    assert lines[3].startswith(f"{final}: corrupt file")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == files  # verify changes nothing
    done = subprocess.run([str(SCRIPT), "verify", str(out)], env=ENV, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 1 and done.stdout == output and done.stderr == ""  # the installed script, for scripts
    code, output = cli("verify", str(tmp_path))
    assert code == 1 and output.startswith("error: ") and "not a sharpscope run directory" in output


def test_verify_names_records_a_crashed_run_lost_and_an_unrecorded_checkpoint(tmp_path: Path) -> None:
    run = crashed(tmp_path / "run")
    lines = run.metrics_path.read_text().splitlines(keepends=True)
    run.metrics_path.write_text("".join(lines[:1] + lines[2:]))  # measurement@3 removed
    stray = run.checkpoint_dir / "step-00000005.pt"
    stray.write_bytes(run.latest_checkpoint()[1].read_bytes())
    code, output = cli("verify", str(run.path))
    assert code == 1 and output.splitlines() == [
        f"{run.metrics_path}: line 2: out of place: it was not written after line 1 (a record before it was "
        "removed, repeated or moved)",
        f"{stray}: not recorded in {run.checkpoint_dir / 'SHA256SUMS'} (its write did not finish, or the manifest "
        "was damaged): it cannot be verified",
        f"{run.metrics_path}: lacks 1 record(s) written before the checkpoint at step 4: measurement@3"], output


def strip_checksums(run: RunDirectory) -> None:
    """Make ``run`` look written before records and files carried checksums."""
    records = [json.loads(line) for line in run.metrics_path.read_text().splitlines()]
    for r in records:
        for key in recordlines.RESERVED:
            r.pop(key)
    run.metrics_path.write_text("".join(jsonsafe.dumps(r) + "\n" for r in records))
    for manifest in (run.path / "SHA256SUMS", run.checkpoint_dir / "SHA256SUMS"):
        manifest.unlink(missing_ok=True)


def test_runs_from_before_checksums_still_load_verify_and_resume(tmp_path: Path, reference) -> None:
    done = tmp_path / "done"
    train(tiny(), done)
    expected = RunDirectory(done).read_metrics()
    strip_checksums(RunDirectory(done))
    assert RunDirectory(done).read_metrics() == expected
    assert len(load_run(done).measurements) == 5
    code, output = cli("verify", str(done))
    assert code == 0 and "5 record(s) written before records carried checksums could not be verified" in output
    assert train(tiny(), done).already_complete
    run = crashed(tmp_path / "crashed")
    strip_checksums(run)
    summary = train(tiny(), run.path)
    assert summary.status == "completed" and same_records(run, reference(tiny()))
    assert recordlines.scan(run.metrics_path.read_bytes()).checked  # the resume added the checksums
    sink = RunDirectory(tmp_path / "sink")
    sink.create({"a": 1})
    sink.metrics_path.write_text('{"step": 0, "x": 1}\n')  # written by an older version
    assert RunDirectory(sink.path).append_metric({"step": 1, "x": 2})
    assert [r["x"] for r in RunDirectory(sink.path).read_metrics()] == [1, 2]
    with pytest.raises(ConfigError, match="record_sha256"):
        sink.append_metric({"step": 2, "record_sha256": "0"})
    with open(sink.metrics_path, "a") as f:
        f.write('{"step": 2, "x"')  # a kill in the middle of an append, then the loop is started again
    assert RunDirectory(sink.path).append_metric({"step": 2, "x": 3})
    assert [r["x"] for r in RunDirectory(sink.path).read_metrics()] == [1, 2, 3]
