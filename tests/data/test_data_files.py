"""MNIST and generic .npz loaders, and resolve_data."""

from pathlib import Path

import numpy as np
import pytest
import torch

from sharpscope.data import DATA_SPECS, mnist_npz, npz, resolve_data
from sharpscope.errors import ConfigError, DataError


@pytest.fixture
def mnist_file(tmp_path: Path) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (20, 28, 28), dtype=np.uint8)
    np.savez(tmp_path / "mnist.npz", x=x, y=np.arange(20) % 10)
    return tmp_path / "mnist.npz", x


def test_mnist_scaling_and_centering(mnist_file) -> None:
    path, x = mnist_file
    ds = mnist_npz(path)
    assert ds.x.shape == (20, 784) and ds.x.dtype == torch.float32
    x01 = x.reshape(20, -1) / 255.0
    assert np.allclose(ds.x.numpy(), x01 - x01.mean(), atol=1e-6)
    assert abs(ds.meta["mean"] - x01.mean()) < 1e-12
    raw = mnist_npz(path, center=None, flatten=False, n=5)
    assert raw.x.shape == (5, 1, 28, 28) and raw.x.min() >= 0 and raw.x.max() <= 1
    feat = mnist_npz(path, center="feature")
    assert feat.x.double().mean(0).abs().max() < 1e-6


def test_mnist_errors(tmp_path: Path) -> None:
    np.savez(tmp_path / "m.npz", x=np.zeros((2, 32, 32), np.uint8), y=np.zeros(2, int))
    with pytest.raises(DataError, match=r"m.npz: 'x' must be uint8 of shape \(N, 28, 28\)"):
        mnist_npz(tmp_path / "m.npz")
    with pytest.raises(ConfigError):
        mnist_npz(tmp_path / "m.npz", center="median")  # type: ignore[arg-type]


def test_generic_npz(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.ones((4, 3), np.float64), y=np.array([0, 1, 0, 1]),
             x_test=np.zeros((2, 3)), y_test=np.array([1.5, 2.5]))
    train = npz(tmp_path / "d.npz")
    assert train.x.dtype == torch.float32 and train.y.dtype == torch.int64 and len(train) == 4
    test = npz(tmp_path / "d.npz", train=False)
    assert test.y.dtype == torch.float32 and len(test) == 2
    np.savez(tmp_path / "e.npz", x=np.ones((4, 3)), y=np.zeros(3))
    with pytest.raises(DataError, match="'x' has 4 rows but 'y' has 3"):
        npz(tmp_path / "e.npz")
    with pytest.raises(DataError, match=r"missing array\(s\) \['x_test', 'y_test'\]"):
        npz(tmp_path / "e.npz", train=False)
    np.save(tmp_path / "single.npy", np.zeros(3))
    with pytest.raises(DataError, match="not an .npz"):
        npz(tmp_path / "single.npy")


def test_resolve_specs(tmp_path: Path, cifar10_folder, mnist_file, mnist1d_cache) -> None:
    folder, raw = cifar10_folder
    ds = resolve_data(f"cifar10:{folder}", n=7)
    assert ds.x.shape == (7, 3, 32, 32) and torch.equal(ds.y, torch.from_numpy(raw["y"][:7]))
    feat = resolve_data(f"cifar10:{folder}", standardize="feature", flatten=True)
    assert feat.x.shape == (60, 3072)
    assert len(resolve_data(f"mnist:{mnist_file[0]}", n=3)) == 3
    assert len(resolve_data("mnist1d", train=False)) == 1000
    np.savez(tmp_path / "g.npz", x=np.ones((3, 2)), y=np.arange(3))
    assert len(resolve_data(f"npz:{tmp_path / 'g.npz'}")) == 3


def test_resolve_errors(tmp_path: Path, mnist_file) -> None:
    with pytest.raises(ConfigError, match="unknown data set 'imagenet'; valid: mnist1d, cifar10:DIR_OR_NPZ"):
        resolve_data("imagenet:/x")
    with pytest.raises(ConfigError, match=r"needs a path: cifar10:PATH"):
        resolve_data("cifar10")
    with pytest.raises(DataError, match="no such file or folder"):
        resolve_data(f"cifar10:{tmp_path / 'nope'}")
    with pytest.raises(ConfigError, match="takes no path"):
        resolve_data("mnist1d:/x")
    with pytest.raises(ConfigError, match=r"does not take option\(s\) \['flatten'\]"):
        resolve_data("mnist1d", flatten=True)
    with pytest.raises(ConfigError, match="single split"):
        resolve_data(f"mnist:{mnist_file[0]}", train=False)
    with pytest.raises(ConfigError):
        resolve_data("")
    assert "mnist1d" in DATA_SPECS
