"""A full disk, a read-only mount, a second writer and a SAM step cut off mid-way: one clear error,
nothing lost, and the same run again finishes with the uninterrupted records."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from sharpscope.errors import ConfigError, StorageError
from sharpscope.track import RunDirectory, runner, train
from tests.faults.faults_helpers import same_records, tiny

pytestmark = pytest.mark.usefixtures("single_thread")


def failing_after(real, calls: int, code: int):  # type: ignore[no-untyped-def]
    """``real`` that raises ``OSError(code)`` from its ``calls``-th call on."""
    count = {"n": 0}

    def fake(*args, **kwargs):  # type: ignore[no-untyped-def]
        count["n"] += 1
        if count["n"] >= calls:
            raise OSError(code, os.strerror(code))
        return real(*args, **kwargs)
    return fake


@pytest.mark.parametrize("calls", [1, 6, 15])
def test_a_full_disk_is_one_line_naming_the_errno_and_a_rerun_finishes(tmp_path: Path, reference,
                                                                        monkeypatch: pytest.MonkeyPatch,
                                                                        calls: int) -> None:
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(os, "fsync", failing_after(os.fsync, calls, errno.ENOSPC))
        with pytest.raises(StorageError) as info:
            train(tiny(), out)
    message = str(info.value)
    assert "ENOSPC" in message and "No space left on device" in message and "nothing it had written was lost" in message
    assert "\n" not in message and str(out) in message
    summary = train(tiny(), out)
    assert summary.status == "completed" and same_records(RunDirectory(out), reference(tiny()))


def test_resuming_on_a_read_only_mount_is_one_line_and_changes_nothing(tmp_path: Path, reference,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"

    def crash(t: int, total: int, record: dict | None) -> None:
        if t == 7:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        train(tiny(), out, progress=crash)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def read_only(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(args[0]))
    real_open = os.open

    def open_read_only(path, flags, *args, **kwargs):  # type: ignore[no-untyped-def]
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            read_only(path)
        return real_open(path, flags, *args, **kwargs)
    with monkeypatch.context() as m:  # what a read-only mount refuses: creating, replacing, deleting files
        m.setattr(os, "open", open_read_only)
        m.setattr(os, "replace", read_only)
        m.setattr(os, "unlink", read_only)
        with pytest.raises(StorageError, match=r"Read-only file system \(EROFS\)"):
            train(tiny(), out)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    summary = train(tiny(), out)
    assert summary.resumed_from_step == 4 and same_records(RunDirectory(out), reference(tiny()))


def test_a_second_writer_is_refused_before_touching_anything(tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(tiny(steps=4), out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with RunDirectory(out).lock(), \
            pytest.raises(ConfigError, match="another process is writing this run directory"):
        train(tiny(steps=4), out)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_a_sam_step_interrupted_in_its_second_pass_resumes_exactly(tmp_path: Path, reference,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tiny(optimizer="sam", optimizer_kwargs={"lr": 0.3, "rho": 0.05})
    real_apply = runner._Session.apply
    seen: dict[str, object] = {"n": 0}

    def apply(self, closure):  # type: ignore[no-untyped-def]
        seen["n"] = int(seen["n"]) + 1  # type: ignore[call-overload]
        if seen["n"] == 6:  # step 5 → 6: the perturbed (second) pass raises
            seen["before"] = [p.detach().clone() for p in self.model.parameters()]
            seen["model"] = self.model

            def interrupted():  # type: ignore[no-untyped-def]
                raise KeyboardInterrupt
            return real_apply(self, interrupted)
        return real_apply(self, closure)

    with monkeypatch.context() as m:
        m.setattr(runner._Session, "apply", apply)
        with pytest.raises(KeyboardInterrupt):
            train(cfg, tmp_path / "run")
    after = list(seen["model"].parameters())  # type: ignore[union-attr]
    assert all(a.equal(b) for a, b in zip(after, seen["before"]))  # type: ignore[arg-type]  # weights restored
    summary = train(cfg, tmp_path / "run")
    assert summary.resumed_from_step == 4 and same_records(RunDirectory(tmp_path / "run"), reference(cfg))


def test_no_permission_to_create_the_run_directory_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
    monkeypatch.setattr(Path, "mkdir", refused)
    with pytest.raises(StorageError, match=r"cannot create the run directory .*run: Permission denied \(EACCES\)"):
        train(tiny(), tmp_path / "run")
