"""MNIST from an ``.npz`` with ``x`` (N, 28, 28) uint8 and ``y`` (N,) labels 0..9.

Preprocessing: pixels are divided by 255 (values in [0, 1]), then centred by subtracting the
mean of the loaded images (Long & Bartlett centre MNIST by the mean of the first batch, which
for their full-batch runs is the loaded training set; whether their mean is one scalar or one
per pixel is not documented, so both are offered):

* ``center="scalar"`` (default): one number, the mean over all pixels of the ``n`` loaded images;
* ``center="feature"``: per-pixel mean over the loaded images;
* ``center=None``: no centring.

The mean used is stored in ``dataset.meta["mean"]`` (a float, or a (784,) list).

``order="interleave"`` reorders the file's examples class by class in turn (the i-th example of
each class, classes ascending, then the (i+1)-th ...; stable) before the first ``n`` are kept, so
a prefix of a class-sorted file such as the shared ``mnist5k.npz`` is class-balanced.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch

from sharpscope.data._npz import check_labels, read_npz
from sharpscope.data.dataset import ArrayDataset
from sharpscope.errors import DataError
from sharpscope.validation import check_choice, check_int


def mnist_npz(path: str | Path, *, n: int | None = None, flatten: bool = True,
              center: Literal["scalar", "feature"] | None = "scalar",
              order: Literal["file", "interleave"] = "file") -> ArrayDataset:
    """MNIST images as float32 (N, 784) (or (N, 1, 28, 28) with ``flatten=False``), int64 labels."""
    check_choice("order", order, ("file", "interleave"))
    check_int("n", n, low=1, optional=True)
    check_choice("center", center, ("scalar", "feature", None))
    path = Path(path).expanduser()
    arrays = read_npz(path, ("x", "y"))
    x = arrays["x"]
    if x.dtype != np.uint8 or x.ndim != 3 or x.shape[1:] != (28, 28) or x.shape[0] == 0:
        raise DataError(f"{path}: 'x' must be uint8 of shape (N, 28, 28), found {x.dtype} {x.shape}")
    y = check_labels(arrays["y"], x.shape[0], 10, f"{path} ('y')")
    if order == "interleave":
        rank = np.zeros(len(y), dtype=np.int64)  # position of each example within its class
        for c in np.unique(y):
            rank[y == c] = np.arange(int((y == c).sum()))
        perm = np.lexsort((y, rank))
        x, y = x[perm], y[perm]
    if n is not None:
        if n > len(y):
            raise DataError(f"{path}: has {len(y)} images, asked for the first {n}")
        x, y = x[:n], y[:n]
    xf = x.reshape(len(x), -1).astype(np.float64) / 255.0
    meta: dict = {"source": str(path), "scale": "x/255", "center": center, "num_classes": 10, "order": order}
    if center == "scalar":
        mean = float(xf.mean())
        xf -= mean
        meta["mean"] = mean
    elif center == "feature":
        mean_v = xf.mean(0)
        xf -= mean_v
        meta["mean"] = mean_v.tolist()
    t = torch.from_numpy(xf.astype(np.float32))
    if not flatten:
        t = t.reshape(-1, 1, 28, 28)
    name = "mnist" + ("" if n is None else f"[:{n}]")
    return ArrayDataset(t, torch.from_numpy(y), name, meta)
