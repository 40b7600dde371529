"""Checked file writes, one place for every writer of the package.

* :func:`atomic_write`: write to a temporary file in the target folder, flush, fsync, then rename;
* :func:`append_bytes`: append to a regular file, flush and fsync (``metrics.jsonl``, CSV sinks);
* :func:`check_target`: the rule both apply first: a write replaces or appends to a regular file
  (or creates one), never a special file (a named pipe, a device, a socket) and never a folder;
* :func:`refuse_links` / :func:`remove_entry`: a folder's own entries (a run directory's files) are
  not symbolic links, so no write, append or deletion is followed out of the folder.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(f)`` on a temporary file next to ``path`` and move it into place.

    Readers see either the old file or the complete new one, never a partial write: the
    temporary file is flushed and fsynced before ``os.replace``; on any error it is removed.
    The file gets the permissions a plain ``open(path, "w")`` would (``0o666`` less the umask).
    """
    path = Path(path)
    check_target(path)
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
    check_target(path, what)
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


_KINDS = ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))


def check_target(path: str | os.PathLike[str], what: str = "output") -> Path:
    """``path`` if a write may create it or replace it: absent, or a regular file (through links).

    A folder raises :class:`~sharpscope.errors.ConfigError`; a named pipe, device or socket raises
    :class:`~sharpscope.errors.StorageError` (``argument`` ``"path"``): replacing it with a regular
    file would destroy it, and writing into it is not what an output file means.
    """
    from sharpscope.errors import ConfigError, StorageError

    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:  # absent, or a dangling link: the write creates a file
        return path
    except OSError:  # unreadable metadata: the write itself reports the error
        return path
    if stat.S_ISDIR(mode):
        raise ConfigError(f"{what} {path} is a folder; give a file name", argument="path")
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _KINDS if test(mode)), "a special file")
        raise StorageError(f"{what} {path} is {kind}, not a regular file; refusing to replace it "
                           "(give the name of a regular file)", argument="path")
    return path


def append_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Append ``data`` to the regular file ``path`` (created if missing), flush and fsync.

    ``path`` itself must not be a symbolic link (``O_NOFOLLOW``) nor a special file
    (:func:`check_target`); a short write raises :class:`OSError` rather than being ignored.
    """
    path = Path(path)
    if path.is_symlink():
        from sharpscope.errors import StorageError

        raise StorageError(f"{path} is a symbolic link; refusing to append through it (replace it with "
                           "the file itself)", argument="path")
    check_target(path)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags, 0o666)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            if written <= 0:
                raise OSError(f"{path}: short write")
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


def refuse_links(folder: str | os.PathLike[str], names: Iterable[str], what: str) -> None:
    """Raise :class:`~sharpscope.errors.StorageError` if any entry ``folder/name`` is a symbolic link.

    A link among a folder's own entries would send its writes (or, on ``force``, its deletions)
    to files outside it; the message names the first one and where it points.
    """
    from sharpscope.errors import StorageError

    for name in names:
        entry = Path(folder) / name
        if entry.is_symlink():
            raise StorageError(f"{entry} is a symbolic link to {os.readlink(entry)}; a {what}'s own files "
                               "must be inside it: replace the link with the file or folder itself, or pass "
                               "force=True to start again", argument="force")


def remove_entry(path: str | os.PathLike[str]) -> None:
    """Delete ``path``: a file or a link is unlinked (a link's target is left alone), a folder is removed
    with its contents (links inside it unlinked, never followed); a missing ``path`` is fine."""
    path = Path(path)
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


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
