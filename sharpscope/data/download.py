"""Optional CIFAR-10 download: checksum-verified before anything is extracted.

Only for machines with a network; nothing else in sharpscope needs one. The archive is streamed
to a temporary file while its SHA-256 is computed; a wrong checksum deletes it and raises
:class:`DataError`. Extraction refuses absolute paths, ``..`` components, links and special
files, so nothing is written outside ``dest``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path, PurePosixPath

from sharpscope.errors import ConfigError, DataError

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_SHA256 = "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"
CIFAR10_FOLDER = "cifar-10-batches-py"
_CIFAR10_FILES = (*[f"data_batch_{i}" for i in range(1, 6)], "test_batch")


def _fetch(url: str, target: Path, sha256: str, timeout: float) -> None:
    h = hashlib.sha256()
    req = urllib.request.Request(url, headers={"User-Agent": "sharpscope"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp, open(target, "wb") as f:
            while chunk := resp.read(1 << 20):
                h.update(chunk)
                f.write(chunk)
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        raise DataError(f"download of {url} failed: {e}") from None
    if h.hexdigest() != sha256.lower():
        raise DataError(f"download of {url}: SHA-256 mismatch, expected {sha256.lower()}, got {h.hexdigest()}; "
                        "the file was deleted")


def _safe_members(tar: tarfile.TarFile, archive: str) -> list[tarfile.TarInfo]:
    members = []
    for m in tar.getmembers():
        p = PurePosixPath(m.name)
        if p.is_absolute() or ".." in p.parts or m.name.startswith(("/", "\\")) or ":" in m.name:
            raise DataError(f"{archive}: refused member {m.name!r} (path outside the destination)")
        if not (m.isfile() or m.isdir()):
            raise DataError(f"{archive}: refused member {m.name!r} (links and special files are not extracted)")
        members.append(m)
    return members


def extract_tar_safely(archive: str | Path, dest: str | Path) -> None:
    """Extract a (gzipped) tar into ``dest`` after checking every member (see module docstring)."""
    archive, dest = Path(archive), Path(dest)
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = _safe_members(tar, str(archive))
            dest_resolved = dest.resolve()
            for m in members:
                target = (dest / m.name).resolve()
                if target != dest_resolved and dest_resolved not in target.parents:
                    raise DataError(f"{archive}: refused member {m.name!r} (resolves outside {dest})")
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, members=members, filter="data")
            else:  # pragma: no cover - Python < 3.11.4
                tar.extractall(dest, members=members)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DataError(f"{archive}: not a readable tar archive ({e})") from None


def download_cifar10(dest: str | Path, *, url: str = CIFAR10_URL, sha256: str = CIFAR10_SHA256,
                     timeout: float = 60.0, force: bool = False) -> Path:
    """Download and extract the CIFAR-10 python archive into ``dest``; returns the batch folder.

    If ``dest/cifar-10-batches-py`` already holds all batches nothing is fetched (unless
    ``force``). Only ``http``/``https`` URLs are accepted.
    """
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise ConfigError(f"download URL must be http(s), got {url!r}")
    if not isinstance(sha256, str) or len(sha256) != 64 or any(c not in "0123456789abcdefABCDEF" for c in sha256):
        raise ConfigError(f"sha256 must be 64 hex digits, got {sha256!r}")
    if not timeout or timeout <= 0:
        raise ConfigError(f"timeout must be positive seconds, got {timeout!r}")
    dest = Path(dest).expanduser()
    folder = dest / CIFAR10_FOLDER
    if not force and all((folder / f).is_file() for f in _CIFAR10_FILES):
        return folder
    dest.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".cifar10-download.", suffix=".tar.gz.part", dir=dest)
    os.close(fd)
    tmp_path = Path(tmp)
    staging = Path(tempfile.mkdtemp(prefix=".cifar10-extract.", dir=dest))
    try:
        _fetch(url, tmp_path, sha256, timeout)
        extract_tar_safely(tmp_path, staging)
        extracted = staging / CIFAR10_FOLDER
        if not extracted.is_dir():
            raise DataError(f"archive from {url} has no {CIFAR10_FOLDER}/ folder")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(extracted, folder)
    finally:
        tmp_path.unlink(missing_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
    return folder
