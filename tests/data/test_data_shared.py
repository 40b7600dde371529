"""Checks against the real data files under the data root; skipped without one (see ``tests/conftest.py``)."""

import numpy as np
import torch

from sharpscope.data import mnist1d, resolve_data


def test_cifar10_5k_from_shared_file(shared_data) -> None:
    ds = resolve_data(f"cifar10:{shared_data / 'cifar10_train16k.npz'}", n=5000)
    assert ds.x.shape == (5000, 3, 32, 32) and ds.y.shape == (5000,)
    # the 50k channel statistics roughly hold on the first 5000 images
    assert ds.x.mean((0, 2, 3)).abs().max() < 0.05
    assert (ds.x.std((0, 2, 3)) - 1).abs().max() < 0.05
    assert torch.bincount(ds.y, minlength=10).min() > 400


def test_cifar10_test_file_is_one_split(shared_data) -> None:
    ds = resolve_data(f"cifar10:{shared_data / 'cifar10_test2k.npz'}", train=False)
    assert len(ds) == 2000 and torch.equal(torch.bincount(ds.y), torch.full((10,), 200))


def test_mnist5k(shared_data) -> None:
    ds = resolve_data(f"mnist:{shared_data / 'mnist5k.npz'}")
    assert ds.x.shape == (5000, 784) and abs(float(ds.x.double().mean())) < 1e-6


def test_generated_mnist1d_equals_published(shared_data, mnist1d_cache) -> None:
    ref = np.load(shared_data / "mnist1d.npz")
    train, test = mnist1d(), mnist1d(train=False)
    assert np.abs(train.x.numpy() - ref["x"].astype(np.float32)).max() < 1e-6
    assert np.array_equal(train.y.numpy(), ref["y"]) and np.array_equal(test.y.numpy(), ref["y_test"])
