"""Product-mode choices kept on disk, so that a new process does not time the same architecture again.

When :class:`~sharpscope.curvature.HessianOperator` chooses between ``fwd-rev`` and ``rev-rev`` by timing
(``mode="auto"`` without the graph cache), the trial products cost about as much as a few real ones:
a third of a cold λ_max run on a small CNN. The choice depends on what is timed (the architecture,
loss, device, precision, batch shapes and probes per pass: the operator's timing key) and on the
machine (the device's name, the CPU threads) and the software (torch and sharpscope versions).
Each choice is stored in its own JSON file named by a hash of all of that, with the key and the
version key written inside:

* the folder is ``$SHARPSCOPE_CACHE_DIR`` when set (``off`` disables the cache), else
  ``$XDG_CACHE_HOME/sharpscope`` or ``~/.cache/sharpscope``, under ``hvp-modes/``;
* a file is read only if its version key equals :func:`version_key` and its key equals the operator's,
  so a new torch or sharpscope version, another machine or :data:`MODE_CACHE_VERSION` bumped when the
  timing rule changes invalidates it (the stale file is then overwritten by a new timing);
* a file is written to a temporary name in the same folder and renamed over the final one
  (``os.replace``, atomic), so concurrent processes read either nothing or a whole file; two that time
  the same key at once both write, and the last one wins (both choices were timed);
* any read or write error leaves the cache out (the mode is timed, as without it), and the record says so.

The operator records where a choice came from (``"how"``: timed, remembered in this process, or read
from this cache with the file's path), so nothing switches silently.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
from importlib import metadata
from pathlib import Path

import torch

#: Bump when the timing rule or the stored record changes: older files are then ignored.
MODE_CACHE_VERSION = 1
#: The environment variable that moves (or, set to ``off``, disables) the cache folder.
CACHE_ENV = "SHARPSCOPE_CACHE_DIR"


def cache_dir() -> Path | None:
    """The folder of stored product-mode choices, or None when the cache is disabled."""
    chosen = os.environ.get(CACHE_ENV)
    if chosen is not None:
        return None if chosen.strip().lower() in ("off", "") else Path(chosen).expanduser() / "hvp-modes"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sharpscope" / "hvp-modes"


def _sharpscope_version() -> str:
    try:
        return metadata.version("sharpscope")
    except metadata.PackageNotFoundError:
        return "unknown"


def machine(device: torch.device) -> str:
    """What the timing depends on beyond the key: the device's name and the CPU threads."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    return f"{device.type}:{name}, {torch.get_num_threads()} threads"


def version_key(device: torch.device) -> str:
    """The cache format, the torch and sharpscope versions and the machine: a stored choice is used only
    when all of them are equal."""
    return (f"mode-cache {MODE_CACHE_VERSION}; torch {torch.__version__}; sharpscope {_sharpscope_version()}; "
            f"{machine(device)}")


def entry_path(key: tuple[object, ...], version: str) -> Path | None:
    """The file of ``key`` under ``version``: the first 40 hex digits of ``SHA-256(version, key)`` in
    :func:`cache_dir` (``None`` when the cache is off)."""
    folder = cache_dir()
    if folder is None:
        return None
    digest = hashlib.sha256(f"{version}\n{key!r}".encode()).hexdigest()[:40]
    return folder / f"{digest}.json"


def load(key: tuple[object, ...], device: torch.device) -> tuple[dict[str, object] | None, str]:
    """The stored record of ``key`` (None when absent, stale or unreadable) and a note saying which."""
    version = version_key(device)
    if (path := entry_path(key, version)) is None:
        return None, f"disabled ({CACHE_ENV}=off)"
    try:
        stored = json.loads(path.read_text())
    except FileNotFoundError:
        return None, f"no entry in {path.parent}"
    except (OSError, ValueError) as err:
        return None, f"unreadable {path} ({type(err).__name__})"
    if not isinstance(stored, dict) or stored.get("version") != version or stored.get("key") != repr(key):
        return None, f"stale entry {path} (other version key)"
    record = stored.get("record")
    return (record, str(path)) if isinstance(record, dict) else (None, f"malformed entry {path}")


def store(key: tuple[object, ...], device: torch.device, record: dict[str, object]) -> str:
    """Write ``record`` for ``key`` atomically; returns the file's path, or why nothing was written."""
    version = version_key(device)
    if (path := entry_path(key, version)) is None:
        return f"not stored ({CACHE_ENV}=off)"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump({"version": version, "key": repr(key), "record": record}, fh)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except (OSError, TypeError, ValueError) as err:
        return f"not stored ({type(err).__name__}: {err})"
    return str(path)


def forget() -> None:
    """Remove every stored choice (tests, benchmarks of a cold start)."""
    folder = cache_dir()
    if folder is None or not folder.is_dir():
        return
    for path in folder.glob("*.json"):
        path.unlink(missing_ok=True)
