"""Turn the CLI's data strings into datasets."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sharpscope.data.cifar import cifar10, cifar100
from sharpscope.data.dataset import ArrayDataset
from sharpscope.data.generic import npz
from sharpscope.data.mnist import mnist_npz
from sharpscope.data.mnist1d_gen import mnist1d
from sharpscope.data.text import text_file
from sharpscope.errors import ConfigError, DataError

# name -> (loader, needs a path, what the path is)
_SOURCES: dict[str, tuple[Callable[..., ArrayDataset], bool, str]] = {
    "mnist1d": (mnist1d, False, ""),
    "cifar10": (cifar10, True, "a python-batch folder or an .npz"),
    "cifar100": (cifar100, True, "a python-batch folder or an .npz"),
    "mnist": (mnist_npz, True, "an .npz"),
    "npz": (npz, True, "an .npz with arrays x and y"),
    "text": (text_file, True, "a text file, read as bytes (next-byte windows)"),
}
DATA_SPECS = ("mnist1d", "cifar10:DIR_OR_NPZ", "cifar100:DIR", "mnist:NPZ", "npz:PATH", "text:PATH")


def resolve_data(spec: str, *, n: int | None = None, train: bool = True, **options: Any) -> ArrayDataset:
    """Load the dataset named by ``spec``: ``mnist1d``, ``cifar10:DIR_OR_NPZ``, ``cifar100:DIR``,
    ``mnist:NPZ``, ``npz:PATH`` or ``text:PATH`` (byte windows for language models). ``n`` keeps the first ``n`` examples; ``options`` go to the
    loader (e.g. ``standardize="feature", flatten=True`` for CIFAR, ``seed=`` for mnist1d).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"data spec must be a non-empty string like {', '.join(DATA_SPECS)}; got {spec!r}")
    name, sep, arg = spec.strip().partition(":")
    key = name.lower()
    if key not in _SOURCES:
        raise ConfigError(f"unknown data set {name!r}; valid: {', '.join(DATA_SPECS)}")
    loader, needs_path, what = _SOURCES[key]
    params = inspect.signature(loader).parameters
    bad = sorted(set(options) - set(params))
    if bad:
        valid = sorted(p for p in params if p not in ("path", "n", "train"))
        raise ConfigError(f"data set {key!r} does not take option(s) {bad}; valid: {valid}")
    kwargs: dict[str, Any] = dict(options)
    kwargs["n"] = n
    if "train" in params:
        kwargs["train"] = train
    elif not train:
        raise ConfigError(f"data set {key!r} has a single split; train=False is not available")
    if not needs_path:
        if arg:
            raise ConfigError(f"data set {key!r} takes no path, got {spec!r}")
        return loader(**kwargs)
    if not arg:
        raise ConfigError(f"data set {key!r} needs a path: {key}:PATH ({what})")
    path = Path(arg).expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such file or folder (from data spec {spec!r})")
    return loader(path, **kwargs)
