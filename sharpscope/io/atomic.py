"""Atomic file writes: write to a temporary file in the target folder, fsync, then rename."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(f)`` on a temporary file next to ``path`` and move it into place.

    Readers see either the old file or the complete new one, never a partial write: the
    temporary file is flushed and fsynced before ``os.replace``; on any error it is removed.
    The file gets the permissions a plain ``open(path, "w")`` would (``0o666`` less the umask).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    _fsync_dir(path.parent)
    return path


def check_writable(path: str | os.PathLike[str], what: str = "output") -> Path:
    """Raise :class:`~sharpscope.errors.ConfigError` unless :func:`atomic_write` can create ``path``.

    Call it before long work, so a bad output path fails in a second rather than after the work.
    The nearest existing folder on the way must accept a new file (missing folders are created on
    write); an existing ``path`` must be a file, and it is left untouched until the write.
    """
    from sharpscope.errors import ConfigError

    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a folder; give a file name")
    folder = path.absolute().parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise ConfigError(f"{what} {path}: {folder} is not a folder")
    try:  # a real trial: permission bits do not tell for root, read-only mounts or special file systems
        with tempfile.TemporaryFile(prefix=".write-check.", dir=folder):
            pass
    except OSError as e:
        raise ConfigError(f"{what} {path}: cannot write in {folder} ({e.strerror or e})") from None
    return path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda f: f.write(data))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    """Best effort: persist the rename itself (not supported on every platform)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
