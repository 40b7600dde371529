"""SHA-256 checksums of written files, kept in a manifest ``SHA256SUMS`` next to them.

The manifest has one line ``<hex digest>  <file name>`` per file, the format ``sha256sum -c``
reads, and is rewritten atomically after the file it describes is in place. A file therefore goes
through three states: absent; present but not yet recorded (a kill landed between the two writes:
the write is not complete); present and recorded. :func:`verify` reads the third as good or corrupt:
the digest of a corrupt file, e.g. one flipped bit, differs from the recorded one with probability
``1 - 2⁻²⁵⁶``.

One process writes a folder's manifest at a time (the run directory's lock guarantees it).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from pathlib import Path
from typing import Literal

from sharpscope.errors import CheckpointError
from sharpscope.io.atomic import atomic_write_bytes

MANIFEST = "SHA256SUMS"
_LINE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")
_CHUNK = 1 << 20

Verdict = Literal["good", "unrecorded", "no-manifest"]


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of the file's bytes, as 64 hex digits."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def manifest_path(path: str | os.PathLike[str]) -> Path:
    """The manifest that records ``path``: ``SHA256SUMS`` in the same folder."""
    return Path(path).parent / MANIFEST


def read_manifest(folder: str | os.PathLike[str]) -> dict[str, str] | None:
    """``{file name: digest}`` of ``folder/SHA256SUMS``, or None when there is none.

    Lines that do not parse (a manifest damaged by hand) are ignored: their files read as unrecorded.
    """
    try:
        text = (Path(folder) / MANIFEST).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return None
    out = {}
    for line in text.splitlines():
        m = _LINE.match(line)
        if m:
            out[m.group(2)] = m.group(1)
    return out


def unreadable_lines(folder: str | os.PathLike[str]) -> int:
    """How many non-blank lines of ``folder/SHA256SUMS`` do not parse (0 without a manifest)."""
    try:
        text = (Path(folder) / MANIFEST).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return 0
    return sum(1 for line in text.splitlines() if line.strip() and not _LINE.match(line))


def _write_manifest(folder: Path, entries: dict[str, str]) -> None:
    text = "".join(f"{digest}  {name}\n" for name, digest in sorted(entries.items()))
    atomic_write_bytes(folder / MANIFEST, text.encode())


def record(*paths: str | os.PathLike[str]) -> None:
    """Record the digests of ``paths`` (files of one folder) in their manifest, atomically."""
    if not paths:
        return
    folder = Path(paths[0]).parent
    entries = read_manifest(folder) or {}
    for p in paths:
        p = Path(p)
        if p.parent != folder:
            raise ValueError(f"{p} is not in {folder}")
        entries[p.name] = sha256_file(p)
    _write_manifest(folder, entries)


def forget(*paths: str | os.PathLike[str]) -> None:
    """Drop the entries of ``paths`` (files of one folder, usually just deleted) from their manifest."""
    if not paths:
        return
    folder = Path(paths[0]).parent
    entries = read_manifest(folder)
    if entries is None:
        return
    names = {Path(p).name for p in paths}
    if names & set(entries):
        _write_manifest(folder, {k: v for k, v in entries.items() if k not in names})


def verify(path: str | os.PathLike[str]) -> Verdict:
    """Check ``path`` against its manifest entry.

    Returns ``"good"`` (digest matches), ``"unrecorded"`` (the manifest exists but has no entry:
    the write did not finish) or ``"no-manifest"`` (a file from elsewhere or from before checksums:
    nothing to check against). Raises :class:`CheckpointError` naming the file when the digest
    differs: the file is corrupt.
    """
    path = Path(path)
    entries = read_manifest(path.parent)
    if entries is None:
        return "no-manifest"
    want = entries.get(path.name)
    if want is None:
        return "unrecorded"
    got = sha256_file(path)
    if got != want:
        raise CheckpointError(f"{path}: corrupt file: its SHA-256 {got[:12]}… differs from the "
                              f"{want[:12]}… recorded in {path.parent / MANIFEST} when it was written")
    return "good"


def set_aside(path: str | os.PathLike[str]) -> Path:
    """Rename a corrupt file to ``<name>.corrupt`` (kept for inspection, ignored by readers) and
    drop its manifest entry; returns the new path."""
    path = Path(path)
    target = path.with_name(path.name + ".corrupt")
    os.replace(path, target)
    with contextlib.suppress(OSError):
        forget(path)
    return target
