"""CIFAR-10 / CIFAR-100 from a local folder (python-batch pickles) or an ``.npz``.

Sources
-------
* Folder in the standard python format: CIFAR-10 ``data_batch_1`` .. ``data_batch_5`` and
  ``test_batch``; CIFAR-100 ``train`` and ``test`` (``fine_labels`` / ``coarse_labels``). The
  folder itself or its parent (holding ``cifar-10-batches-py`` / ``cifar-100-python``) may be
  given. The pickles are read with a restricted unpickler that only rebuilds numpy arrays and
  builtin containers; any other global in the file is refused, so no code in it can run.
* ``.npz`` with ``x`` (N, 32, 32, 3) uint8 and ``y`` (N,) integer labels, optionally
  ``x_test``/``y_test``. ``train=False`` selects ``x_test``/``y_test`` when present; a file
  without them is one split and is returned as is whatever ``train`` says.

Preprocessing (``standardize``)
-------------------------------
* ``"channel"``: ``(x/255 - mean_c) / std_c`` with the known full-training-set statistics
  (CIFAR-10 mean 0.4914, 0.4822, 0.4465, std 0.2470, 0.2435, 0.2616; CIFAR-100 mean 0.5071,
  0.4865, 0.4409, std 0.2673, 0.2564, 0.2762), or ``channel_stats=(mean, std)`` (e.g. Liu et
  al.'s std 0.2023, 0.1994, 0.2010).
* ``"feature"``: per-feature (pixel and channel) mean and standard deviation (population,
  ddof 0) as in Cohen et al., computed over the *whole training split of the source* (all
  50 000 images of a folder, exactly Cohen et al.'s full-train statistics; all of ``x`` for an
  ``.npz``), never over the first-``n`` subset; the test split uses the same statistics. A
  one-split ``.npz`` loaded with ``train=False`` has no training split, so its own statistics
  are used unless ``feature_stats=`` (see :func:`cifar_feature_stats`) is passed. Features with
  zero spread are divided by 1. What was used is recorded in ``dataset.meta``.
* ``None``: ``x/255`` in [0, 1].

Output is NCHW float32, or with ``flatten=True`` (N, 3072) in C, H, W order. Labels are int64.
"""

from __future__ import annotations

import importlib
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor

from sharpscope.data._npz import check_labels, read_npz
from sharpscope.data.dataset import ArrayDataset
from sharpscope.errors import ConfigError, DataError
from sharpscope.validation import check_choice, check_int

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

Standardize = Literal["channel", "feature"] | None
_IMAGE = (32, 32, 3)
_FEATURES = 32 * 32 * 3
_CHUNK = 4096

_LAYOUT: dict[str, dict[str, Any]] = {
    "cifar10": {"subdir": "cifar-10-batches-py", "train": [f"data_batch_{i}" for i in range(1, 6)],
                "test": ["test_batch"], "classes": {"labels": 10}},
    "cifar100": {"subdir": "cifar-100-python", "train": ["train"], "test": ["test"],
                 "classes": {"fine_labels": 100, "coarse_labels": 20}},
}


# ----------------------------------------------------------------- restricted unpickling
def _numpy_global(submodule: str, name: str) -> Any:
    for prefix in ("numpy._core", "numpy.core"):
        try:
            return getattr(importlib.import_module(f"{prefix}.{submodule}"), name)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"numpy has no {submodule}.{name}")  # pragma: no cover


def _allowed_globals() -> dict[tuple[str, str], Any]:
    import _codecs

    reconstruct = _numpy_global("multiarray", "_reconstruct")
    scalar = _numpy_global("multiarray", "scalar")
    frombuffer = _numpy_global("numeric", "_frombuffer")
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _codecs.encode,  # how Python 3 pickles bytes at protocol 2
    }
    for prefix in ("numpy.core", "numpy._core"):
        allowed[(f"{prefix}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{prefix}.multiarray", "scalar")] = scalar
        allowed[(f"{prefix}.numeric", "_frombuffer")] = frombuffer
    return allowed


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that rebuilds numpy arrays and builtin containers, and refuses everything else."""

    _allowed: dict[tuple[str, str], Any] | None = None

    def find_class(self, module: str, name: str) -> Any:
        if _NumpyOnlyUnpickler._allowed is None:
            _NumpyOnlyUnpickler._allowed = _allowed_globals()
        try:
            return _NumpyOnlyUnpickler._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused global {module}.{name} (only numpy arrays are allowed)") from None


def load_numpy_pickle(path: str | Path) -> Any:
    """Unpickle a file that may only contain numpy arrays, dicts, lists, strings and numbers."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return _NumpyOnlyUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except pickle.UnpicklingError as e:
        if "truncated" in str(e) or "ran out" in str(e).lower():
            raise DataError(f"{path}: truncated pickle ({e})") from None
        raise DataError(f"{path}: not a CIFAR python batch ({e})") from None
    except (EOFError, ValueError, TypeError, IndexError, AttributeError, MemoryError, OSError) as e:
        raise DataError(f"{path}: truncated or corrupt pickle ({type(e).__name__}: {e})") from None


def _read_batch(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    obj = load_numpy_pickle(path)
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a dict, found {type(obj).__name__}")
    d = {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}
    for key in ("data", label_key):
        if key not in d:
            raise DataError(f"{path}: missing key {key!r}; found {sorted(map(str, d))}")
    data = d["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _FEATURES:
        found = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: 'data' must be a uint8 array of shape (N, 3072), found {found}")
    labels = d[label_key]
    if not isinstance(labels, (list, tuple, np.ndarray)):
        raise DataError(f"{path}: {label_key!r} must be a list of ints, found {type(labels).__name__}")
    try:
        y = np.asarray(labels)
    except ValueError as e:
        raise DataError(f"{path}: {label_key!r} is not a flat list of ints ({e})") from None
    y = check_labels(y, data.shape[0], num_classes, f"{path} ({label_key!r})")
    # stored as (N, 3*32*32) in C, H, W order -> NHWC like the .npz form
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), y


# ----------------------------------------------------------------- sources
def _folder(path: Path, dataset: str) -> Path | None:
    lay = _LAYOUT[dataset]
    if path.is_dir():
        if (path / lay["subdir"]).is_dir() and not (path / lay["test"][0]).exists():
            return path / lay["subdir"]
        return path
    return None


class _Split(NamedTuple):
    x: np.ndarray  # NHWC uint8
    y: np.ndarray  # int64
    desc: str  # where it came from
    one_split: bool  # an .npz without x_test/y_test: no separate training split exists


def _read_split(path: Path, dataset: str, train: bool, n: int | None, label_key: str) -> _Split:
    """Raw images and labels of one split (with ``n``, folder batches past the first ``n`` are skipped)."""
    num_classes = _LAYOUT[dataset]["classes"][label_key]
    folder = _folder(path, dataset)
    if folder is not None:
        names = _LAYOUT[dataset]["train" if train else "test"]
        missing = [nm for nm in names if not (folder / nm).is_file()]
        if missing:
            raise DataError(f"{folder}: not a {dataset} python-batch folder, missing {missing}")
        xs, ys, total = [], [], 0
        for nm in names:
            x, y = _read_batch(folder / nm, label_key, num_classes)
            xs.append(x)
            ys.append(y)
            total += len(y)
            if n is not None and total >= n:
                break
        return _Split(np.concatenate(xs), np.concatenate(ys), f"{folder} ({'train' if train else 'test'} batches)", False)
    if not path.is_file():
        raise DataError(f"{path}: no such file or folder")
    arrays = read_npz(path, ("x", "y"), ("x_test", "y_test"))
    xk, yk = "x", "y"
    if not train and "x_test" in arrays:
        if "y_test" not in arrays:
            raise DataError(f"{path}: has 'x_test' but no 'y_test'")
        xk, yk = "x_test", "y_test"
    x = _check_images(arrays[xk], f"{path} ({xk!r})")
    y = check_labels(arrays[yk], x.shape[0], num_classes, f"{path} ({yk!r})")
    return _Split(x, y, f"{path} ({xk!r})", "x_test" not in arrays)


def _check_images(x: np.ndarray, where: str) -> np.ndarray:
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != _IMAGE:
        raise DataError(f"{where}: images must be uint8 of shape (N, 32, 32, 3), found {x.dtype} {x.shape}")
    if x.shape[0] == 0:
        raise DataError(f"{where}: no images")
    return x


# ----------------------------------------------------------------- preprocessing
def _raw_feature_stats(x_nhwc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and population std of raw 0..255 values, in C, H, W order (float64)."""
    s = np.zeros(_FEATURES, np.float64)
    s2 = np.zeros(_FEATURES, np.float64)
    for i in range(0, len(x_nhwc), _CHUNK):
        c = x_nhwc[i:i + _CHUNK].transpose(0, 3, 1, 2).reshape(-1, _FEATURES).astype(np.float64)
        s += c.sum(0)
        s2 += (c * c).sum(0)  # integer-valued: these sums are exact in float64
    n = len(x_nhwc)
    mean = s / n
    var = np.maximum(s2 / n - mean * mean, 0.0)
    return mean, np.sqrt(var)


def cifar_feature_stats(path: str | Path, *, dataset: Literal["cifar10", "cifar100"] = "cifar10") -> tuple[Tensor, Tensor]:
    """Per-feature mean and std (ddof 0) of ``x/255`` over the training split of ``path``.

    Returns float64 tensors of shape (3072,) in C, H, W order, for ``feature_stats=`` of
    :func:`cifar10` when the test images come from another file than the training ones.
    """
    if dataset not in _LAYOUT:
        raise ConfigError(f"dataset must be one of {sorted(_LAYOUT)}, got {dataset!r}")
    split = _read_split(Path(path).expanduser(), dataset, True, None, "labels" if dataset == "cifar10" else "fine_labels")
    mean, std = _raw_feature_stats(split.x)
    return torch.from_numpy(mean / 255.0), torch.from_numpy(std / 255.0)


def _as_vec(v: Sequence[float] | Tensor | np.ndarray, size: int, what: str) -> np.ndarray:
    a = np.asarray(v.detach().cpu().numpy() if isinstance(v, Tensor) else v, dtype=np.float64).reshape(-1)
    if a.shape != (size,):
        raise ConfigError(f"{what} must have {size} values, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ConfigError(f"{what} has non-finite values")
    return a


def _standardize(x_nhwc: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """(x/255 - mean) / std per feature (C, H, W order) as float32, NCHW; chunked."""
    std = np.where(std > 0, std, 1.0)
    out = np.empty((len(x_nhwc), 3, 32, 32), np.float32)
    m, s = mean.reshape(3, 32, 32), std.reshape(3, 32, 32)
    for i in range(0, len(x_nhwc), _CHUNK):
        c = x_nhwc[i:i + _CHUNK].transpose(0, 3, 1, 2).astype(np.float64) / 255.0
        out[i:i + _CHUNK] = (c - m) / s
    return out


def _load(path: str | Path, dataset: str, *, train: bool, n: int | None, standardize: Standardize,
          flatten: bool, label_key: str, channel_stats: Any, feature_stats: Any) -> ArrayDataset:
    check_int("n", n, low=1, optional=True)
    check_choice("standardize", standardize, ("channel", "feature", None))
    path = Path(path).expanduser()
    own_stats = standardize == "feature" and feature_stats is None
    split = _read_split(path, dataset, train, None if (own_stats and train) else n, label_key)
    x, y, desc = split.x, split.y, split.desc
    stats_x, stats_desc = x, desc  # the full training split when own_stats (set below for test)
    if own_stats and not train and not split.one_split:
        other = _read_split(path, dataset, True, None, label_key)
        stats_x, stats_desc = other.x, other.desc
    if n is not None:
        if n > len(y):
            raise DataError(f"{desc}: has {len(y)} images, asked for the first {n}")
        x, y = x[:n], y[:n]
    meta: dict[str, Any] = {"source": desc, "split": "train" if train else "test", "standardize": standardize,
                            "num_classes": _LAYOUT[dataset]["classes"][label_key], "flatten": flatten}
    if standardize == "channel":
        if channel_stats is None:
            cm, cs = (CIFAR10_MEAN, CIFAR10_STD) if dataset == "cifar10" else (CIFAR100_MEAN, CIFAR100_STD)
            meta["stats"] = f"known {dataset} channel statistics mean={cm} std={cs}"
        else:
            try:
                cm, cs = channel_stats
            except (TypeError, ValueError):
                raise ConfigError("channel_stats must be a pair (mean, std) of 3 values each") from None
            meta["stats"] = f"given channel statistics mean={tuple(cm)} std={tuple(cs)}"
        mean = np.repeat(_as_vec(cm, 3, "channel mean"), 32 * 32)
        std = np.repeat(_as_vec(cs, 3, "channel std"), 32 * 32)
        if np.any(std <= 0):
            raise ConfigError("channel std must be positive")
        out = _standardize(x, mean, std)
    elif standardize == "feature":
        if feature_stats is not None:
            if not isinstance(feature_stats, (tuple, list)) or len(feature_stats) != 2:
                raise ConfigError("feature_stats must be a pair (mean, std) of 3072 values each")
            mean = _as_vec(feature_stats[0], _FEATURES, "feature mean")
            std = _as_vec(feature_stats[1], _FEATURES, "feature std")
            meta["stats"] = "given per-feature statistics"
        else:
            rm, rs = _raw_feature_stats(stats_x)
            mean, std = rm / 255.0, rs / 255.0
            if not train and split.one_split:
                meta["stats"] = f"per-feature mean/std (ddof 0) over this one-split file itself ({len(stats_x)} images)"
            else:
                meta["stats"] = f"per-feature mean/std (ddof 0) over {len(stats_x)} training images of {stats_desc}"
        out = _standardize(x, mean, std)
    else:
        out = x.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255.0)
    t = torch.from_numpy(np.ascontiguousarray(out))
    if flatten:
        t = t.reshape(len(t), -1)
    name = f"{dataset}-{'train' if train else 'test'}"
    if n is not None:
        name += f"[:{n}]"
    return ArrayDataset(t, torch.from_numpy(np.ascontiguousarray(y)), name, meta)


def cifar10(path: str | Path, *, train: bool = True, n: int | None = None, standardize: Standardize = "channel",
            flatten: bool = False, channel_stats: tuple[Sequence[float], Sequence[float]] | None = None,
            feature_stats: tuple[Tensor, Tensor] | None = None) -> ArrayDataset:
    """CIFAR-10 from a python-batch folder or an ``.npz`` (see the module docstring).

    ``n`` keeps the first ``n`` images in canonical order (``n=5000``: "cifar10-5k").
    """
    return _load(path, "cifar10", train=train, n=n, standardize=standardize, flatten=flatten,
                 label_key="labels", channel_stats=channel_stats, feature_stats=feature_stats)


def cifar100(path: str | Path, *, train: bool = True, n: int | None = None, standardize: Standardize = "channel",
             flatten: bool = False, labels: Literal["fine", "coarse"] = "fine",
             channel_stats: tuple[Sequence[float], Sequence[float]] | None = None,
             feature_stats: tuple[Tensor, Tensor] | None = None) -> ArrayDataset:
    """CIFAR-100 (``fine`` 100 classes or ``coarse`` 20) from a python folder or an ``.npz``."""
    check_choice("labels", labels, ("fine", "coarse"))
    return _load(path, "cifar100", train=train, n=n, standardize=standardize, flatten=flatten,
                 label_key=f"{labels}_labels", channel_stats=channel_stats, feature_stats=feature_stats)
