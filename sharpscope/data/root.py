"""The data root: the one folder where sharpscope looks for data files it does not generate.

The root is ``$SHARPSCOPE_DATA`` (the command line's ``--data-root`` sets it); files are placed there by
hand under their own names (``cifar10_train16k.npz``, ``cifar10_test2k.npz``, ``mnist5k.npz``, ...), nothing
is downloaded. Without a root, or without a file under it, a recipe that cannot run raises
:class:`MissingDataError` naming the file and the setting, and a study that can do without the file
states what it does instead (:func:`fallback_notes`), prints it and records it in its summary.
MNIST-1D needs no root: it is generated (:mod:`sharpscope.data.cache`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from sharpscope.errors import ConfigError

DATA_ROOT_ENV = "SHARPSCOPE_DATA"

#: The files of the shared data folder that recipes and studies use.
CIFAR10_TRAIN = "cifar10_train16k.npz"
CIFAR10_TEST = "cifar10_test2k.npz"
MNIST_5K = "mnist5k.npz"


class MissingDataError(ConfigError):
    """A recipe or study needs a data file that is not under the data root."""


class DataFallbackWarning(UserWarning):
    """A study runs without a data file of the root, doing what the warning states instead."""


def data_root() -> Path | None:
    """The data root, read from ``$SHARPSCOPE_DATA`` at every call; None when unset or empty.

    A value that is not a folder raises :class:`ConfigError` (a mistyped root would otherwise read as
    "no data")."""
    value = os.environ.get(DATA_ROOT_ENV, "").strip()
    if not value:
        return None
    root = Path(value).expanduser()
    if not root.is_dir():
        raise ConfigError(f"the data root ${DATA_ROOT_ENV}={value} is not a folder", argument="data_root")
    return root.resolve()


def where() -> str:
    """``"under the data root /x ($SHARPSCOPE_DATA)"``, or that no root is set: the end of every message
    about a missing file."""
    root = data_root()
    if root is None:
        return f"under the data root (none set: set ${DATA_ROOT_ENV} or pass --data-root)"
    return f"under the data root {root} (${DATA_ROOT_ENV})"


def data_file(name: str) -> Path | None:
    """``<root>/<name>`` when the root is set and holds that file, else None."""
    root = data_root()
    if root is None or not (root / name).is_file():
        return None
    return root / name


def missing_data(needed_by: str, *names: str) -> MissingDataError:
    """The error for ``needed_by`` (a recipe, a study) lacking every one of ``names``: one line naming the
    files, the root and the setting."""
    return MissingDataError(f"{needed_by} needs {' or '.join(names)} {where()}", argument="data_root")


def fallback_notes(without: Mapping[str, str]) -> list[str]:
    """``{file: what is done without it}`` → one line per absent file: ``"<file> not found under the data
    root <root> ($SHARPSCOPE_DATA): <what is done>"``."""
    return [f"{name} not found {where()}: {instead}" for name, instead in without.items() if data_file(name) is None]
