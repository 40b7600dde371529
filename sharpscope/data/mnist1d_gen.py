"""MNIST-1D (Greydanus & Kobak), generated offline by the ``mnist1d`` package and cached.

The package's ``get_dataset`` tries a download first; we call ``make_dataset`` directly with
its default arguments (only the seed can be changed), which reproduces the published set for
the default seed 42. Generation takes a few seconds, so the arrays are cached as ``.npz`` in
:func:`~sharpscope.data.cache.cache_dir` (written atomically).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import random
import zipfile

import numpy as np
import torch

from sharpscope.data.cache import cache_dir
from sharpscope.data.dataset import ArrayDataset
from sharpscope.errors import DataError
from sharpscope.io.atomic import atomic_write
from sharpscope.validation import check_int

DEFAULT_SEED = 42
_KEYS = ("x", "y", "x_test", "y_test")


def _dataset_args(seed: int) -> dict:
    from mnist1d.data import get_dataset_args

    args = get_dataset_args(as_dict=True)
    args = dict(args)
    args.pop("url", None)
    args["seed"] = int(seed)
    return args


def _generate(args: dict) -> dict[str, np.ndarray]:
    """Run the generator without leaking its global seeding into the caller's RNG state."""
    from mnist1d.data import get_dataset_args, make_dataset

    full = get_dataset_args()
    for k, v in args.items():
        setattr(full, k, v)
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        raw = make_dataset(full)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return {k: np.asarray(raw[k]) for k in _KEYS}


def _cache_path(args: dict):
    key = hashlib.sha256(json.dumps(args, sort_keys=True).encode()).hexdigest()[:12]
    return cache_dir() / f"mnist1d-seed{args['seed']}-{key}.npz"


def _load_arrays(seed: int) -> dict[str, np.ndarray]:
    args = _dataset_args(seed)
    path = _cache_path(args)
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as f:
                arrays = {k: f[k] for k in _KEYS}
            if arrays["x"].shape == (4000, 40) and arrays["x_test"].shape == (1000, 40):
                return arrays
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
            pass  # unreadable cache entry: regenerate and overwrite it
    arrays = _generate(args)

    def write(f) -> None:
        buf = io.BytesIO()
        np.savez(buf, **arrays)  # type: ignore[arg-type]  # numpy's stub matches **arrays against allow_pickle
        f.write(buf.getvalue())

    with contextlib.suppress(OSError):  # a read-only cache only costs the regeneration next time
        atomic_write(path, write)
    return arrays


def mnist1d(*, n: int | None = None, train: bool = True, seed: int = DEFAULT_SEED) -> ArrayDataset:
    """MNIST-1D: x float32 (4000, 40) train / (1000, 40) test, y int64 in 0..9.

    ``n`` keeps the first ``n`` examples. The inputs are the package's own globally centred and
    scaled values (mean 0, std 1 over all 5000 examples); no further preprocessing.
    ``seed`` 42 (default) gives the published data set.
    """
    check_int("mnist1d seed", seed, low=0, high=2**32 - 1)  # NumPy's seed range
    arrays = _load_arrays(seed)
    xk, yk = ("x", "y") if train else ("x_test", "y_test")
    x = torch.from_numpy(np.ascontiguousarray(arrays[xk], dtype=np.float32))
    y = torch.from_numpy(np.ascontiguousarray(arrays[yk], dtype=np.int64))
    if y.min() < 0 or y.max() > 9:
        raise DataError("mnist1d generator returned labels outside 0..9")
    split = "train" if train else "test"
    ds = ArrayDataset(x, y, f"mnist1d-{split}", {"source": "mnist1d", "split": split, "seed": seed,
                                                  "num_classes": 10})
    return ds if n is None else ds.subset(n)
