"""SHA-256 manifests: the three states of a written file, corruption named, sha256sum's format."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from sharpscope.errors import CheckpointError
from sharpscope.io import checksums


def test_record_verify_forget_and_set_aside(tmp_path: Path) -> None:
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"alpha")
    b.write_bytes(b"beta")
    assert checksums.verify(a) == "no-manifest"
    checksums.record(a)
    assert checksums.verify(a) == "good" and checksums.verify(b) == "unrecorded"
    checksums.record(b)
    text = (tmp_path / "SHA256SUMS").read_text()  # the format `sha256sum -c` reads
    assert text == "".join(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n" for p in (a, b))
    b.write_bytes(b"bets")
    with pytest.raises(CheckpointError, match=r"b\.bin: corrupt file: its SHA-256 .* differs"):
        checksums.verify(b)
    moved = checksums.set_aside(b)
    assert moved.name == "b.bin.corrupt" and not b.exists() and checksums.read_manifest(tmp_path) == {
        "a.bin": hashlib.sha256(b"alpha").hexdigest()}
    checksums.forget(a)
    assert checksums.read_manifest(tmp_path) == {} and checksums.verify(a) == "unrecorded"


def test_a_damaged_manifest_line_reads_as_unrecorded(tmp_path: Path) -> None:
    a = tmp_path / "a.bin"
    a.write_bytes(b"alpha")
    (tmp_path / "SHA256SUMS").write_text("zz  a.bin\n")
    assert checksums.verify(a) == "unrecorded"
