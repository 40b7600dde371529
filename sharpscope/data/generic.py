"""Any data set stored as an ``.npz`` with arrays ``x`` and ``y``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sharpscope.data._npz import read_npz
from sharpscope.data.dataset import ArrayDataset
from sharpscope.errors import DataError
from sharpscope.validation import check_int


def npz(path: str | Path, *, n: int | None = None, train: bool = True) -> ArrayDataset:
    """``x`` and ``y`` as tensors, unchanged except for dtype: floating ``x`` becomes float32, ``y``
    keeps integer labels as int64 and floating targets as float32.

    ``train=False`` reads ``x_test``/``y_test`` and fails if the file has none. Integer ``x``
    (e.g. uint8 images) is converted to float32 without rescaling.
    """
    check_int("n", n, low=1, optional=True)
    path = Path(path).expanduser()
    keys = ("x", "y") if train else ("x_test", "y_test")
    arrays = read_npz(path, keys)
    x, y = arrays[keys[0]], arrays[keys[1]]
    for k, a in zip(keys, (x, y)):
        if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
            raise DataError(f"{path}: {k!r} has non-numeric dtype {a.dtype}")
        if a.ndim == 0 or a.shape[0] == 0:
            raise DataError(f"{path}: {k!r} has no examples (shape {a.shape})")
    if x.shape[0] != y.shape[0]:
        raise DataError(f"{path}: {keys[0]!r} has {x.shape[0]} rows but {keys[1]!r} has {y.shape[0]}")
    for k, a in zip(keys, (x, y)):  # stored as float32: larger magnitudes would become inf
        if np.issubdtype(a.dtype, np.floating) and np.all(np.isfinite(a)) and a.size and \
                float(np.abs(a).max()) > float(np.finfo(np.float32).max):
            raise DataError(f"{path}: {k!r} holds values up to {float(np.abs(a).max()):.3g}, which overflow "
                            "float32; rescale the data")
    if np.issubdtype(y.dtype, np.floating):
        if not np.all(np.isfinite(y)):
            raise DataError(f"{path}: {keys[1]!r} has non-finite values")
        yt = torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32))
    else:
        yt = torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))
    if np.issubdtype(x.dtype, np.floating) and not np.all(np.isfinite(x)):
        raise DataError(f"{path}: {keys[0]!r} has non-finite values")
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    name = f"{path.stem}-{'train' if train else 'test'}"
    ds = ArrayDataset(xt, yt, name, {"source": str(path), "split": "train" if train else "test"})
    return ds if n is None else ds.subset(n)
