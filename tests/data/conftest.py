"""Fixtures for the data tests: tiny fake CIFAR folders and a per-session MNIST-1D cache."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

SHARED_FILES = ("cifar10_train16k.npz", "cifar10_test2k.npz", "mnist5k.npz", "mnist1d.npz")


def write_batch(path: Path, images_nhwc: np.ndarray, labels: np.ndarray, *, label_key: str = "labels",
                protocol: int = 2, extra: dict | None = None) -> None:
    """Write one batch the way the original python-format CIFAR files are laid out."""
    data = np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2).reshape(len(images_nhwc), -1))
    d = {b"batch_label": b"fake batch", label_key.encode(): [int(v) for v in labels], b"data": data,
         b"filenames": [f"img{i}.png".encode() for i in range(len(labels))]}
    if extra:
        d.update(extra)
    path.write_bytes(pickle.dumps(d, protocol=protocol))


def make_images(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)


@pytest.fixture
def cifar10_folder(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """A CIFAR-10 python folder with 5 x 12 training and 10 test images; returns it and the raw arrays."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    xs, ys = [], []
    for i in range(1, 6):
        x, y = make_images(rng, 12), rng.integers(0, 10, 12)
        write_batch(folder / f"data_batch_{i}", x, y)
        xs.append(x)
        ys.append(y)
    xt, yt = make_images(rng, 10), rng.integers(0, 10, 10)
    write_batch(folder / "test_batch", xt, yt)
    return folder, {"x": np.concatenate(xs), "y": np.concatenate(ys), "x_test": xt, "y_test": yt}


@pytest.fixture
def make_cifar10_folder() -> Callable[[Path], Path]:
    """Write a tiny CIFAR-10 folder (2 images per batch) under a given parent; returns the folder."""

    def make(parent: Path) -> Path:
        rng = np.random.default_rng(1)
        folder = parent / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            write_batch(folder / name, make_images(rng, 2), rng.integers(0, 10, 2))
        return folder

    return make


@pytest.fixture(scope="session")
def _mnist1d_session_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generate MNIST-1D once per session into a temporary cache folder."""
    from sharpscope.data import mnist1d

    cache = tmp_path_factory.mktemp("sharpscope-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SHARPSCOPE_CACHE", str(cache))
        mnist1d()
    return cache


@pytest.fixture
def mnist1d_cache(_mnist1d_session_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``$SHARPSCOPE_CACHE`` pointing at the session's generated MNIST-1D cache."""
    monkeypatch.setenv("SHARPSCOPE_CACHE", str(_mnist1d_session_cache))
    return _mnist1d_session_cache


@pytest.fixture
def write_cifar_batch() -> Callable[..., None]:
    """The :func:`write_batch` helper, for tests that build their own folders."""
    return write_batch


@pytest.fixture
def shared_data() -> Path:
    """The data root (``$SHARPSCOPE_DATA``, see ``tests/conftest.py``); skips the test when none is set or it
    lacks one of the real-data files the tests read."""
    from sharpscope.data import data_root

    root = data_root()
    if root is None:
        pytest.skip("no data root: $SHARPSCOPE_DATA is unset and no ../shared/data is beside the repository")
    missing = [name for name in SHARED_FILES if not (root / name).is_file()]
    if missing:
        pytest.skip(f"the data root {root} lacks {', '.join(missing)}")
    return root
