"""Atomic writes leave the permissions of an ordinary write and never a partial file."""

import os
from pathlib import Path

import pytest

from sharpscope.io import atomic_write, atomic_write_bytes


def test_atomic_file_has_umask_permissions(tmp_path: Path) -> None:
    mask = os.umask(0o022)
    try:
        path = atomic_write_bytes(tmp_path / "a.json", b"{}")
    finally:
        os.umask(mask)
    assert path.read_bytes() == b"{}"
    assert path.stat().st_mode & 0o777 == 0o644


def test_failed_write_keeps_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = atomic_write_bytes(tmp_path / "a.bin", b"old")

    def broken(f) -> None:
        f.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, broken)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]
