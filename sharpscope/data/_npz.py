"""Reading ``.npz`` files with one clear :class:`DataError` for every way they can be broken."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from sharpscope.errors import DataError


def read_npz(path: str | Path, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Load the ``required`` (and present ``optional``) arrays of an ``.npz`` without pickles."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        f = np.load(path, allow_pickle=False)
        if not isinstance(f, np.lib.npyio.NpzFile):
            raise DataError(f"{path}: not an .npz archive (a single .npy array?)")
        with f:
            found = list(f.files)
            missing = [k for k in required if k not in found]
            if missing:
                raise DataError(f"{path}: missing array(s) {missing}; found {found}, expected {list(required)}")
            return {k: np.asarray(f[k]) for k in (*required, *optional) if k in found}
    except DataError:
        raise
    except ValueError as e:
        if "pickle" in str(e).lower():
            raise DataError(f"{path}: holds object arrays (pickles), which are refused") from None
        raise DataError(f"{path}: unreadable .npz ({e})") from None
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise DataError(f"{path}: truncated or corrupt .npz ({type(e).__name__}: {e})") from None


def check_labels(y: np.ndarray, n: int, num_classes: int | None, where: str) -> np.ndarray:
    """Labels as int64 of shape (n,), each in 0..num_classes-1 (when given)."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.shape != (n,):
        raise DataError(f"{where}: labels have shape {y.shape}, expected ({n},)")
    if not (np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_):
        raise DataError(f"{where}: labels have dtype {y.dtype}, expected an integer dtype")
    y = y.astype(np.int64)
    if num_classes is not None and n > 0:
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= num_classes:
            raise DataError(f"{where}: label out of range: found {lo}..{hi}, expected 0..{num_classes - 1}")
    return y
