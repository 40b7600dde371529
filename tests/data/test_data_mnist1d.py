import random
from pathlib import Path

import numpy as np
import pytest
import torch

import sharpscope.data.mnist1d_gen as m1d
from sharpscope.data import mnist1d
from sharpscope.errors import ConfigError


def test_shapes_and_dtypes(mnist1d_cache: Path) -> None:
    train, test = mnist1d(), mnist1d(train=False)
    assert train.x.shape == (4000, 40) and train.x.dtype == torch.float32
    assert test.x.shape == (1000, 40) and test.y.shape == (1000,)
    assert train.y.dtype == torch.int64 and int(train.y.min()) == 0 and int(train.y.max()) == 9
    # the generator centres and scales over all 5000 examples
    allx = torch.cat([train.x, test.x]).double()
    assert abs(float(allx.mean())) < 1e-5 and abs(float(allx.std(unbiased=False)) - 1) < 1e-5
    assert len(mnist1d(n=100)) == 100 and torch.equal(mnist1d(n=100).x, train.x[:100])


def test_cache_file_is_written_and_reused(mnist1d_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = list(mnist1d_cache.glob("mnist1d-seed42-*.npz"))
    assert len(files) == 1
    assert not list(mnist1d_cache.glob("*.tmp"))

    def boom(args):  # a cache hit must not regenerate
        raise AssertionError("regenerated despite a cache hit")

    monkeypatch.setattr(m1d, "_generate", boom)
    assert mnist1d().x.shape == (4000, 40)


def test_corrupt_cache_is_regenerated(mnist1d_cache: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SHARPSCOPE_CACHE", str(tmp_path))
    good = next(mnist1d_cache.glob("mnist1d-seed42-*.npz"))
    target = tmp_path / good.name
    target.write_bytes(good.read_bytes()[:100])  # truncated
    arrays = {k: np.load(good)[k] for k in ("x", "y", "x_test", "y_test")}
    monkeypatch.setattr(m1d, "_generate", lambda args: arrays)
    ds = mnist1d()
    assert ds.x.shape == (4000, 40)
    assert target.stat().st_size == good.stat().st_size  # rewritten whole


def test_cache_key_depends_on_seed() -> None:
    assert m1d._cache_path(m1d._dataset_args(1)) != m1d._cache_path(m1d._dataset_args(2))
    with pytest.raises(ConfigError):
        mnist1d(seed="1")  # type: ignore[arg-type]


def test_generation_leaves_global_rng_untouched(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_make_dataset(args):
        calls.append(args.seed)
        np.random.seed(args.seed)
        random.seed(args.seed)
        return {"x": np.zeros((4000, 40)), "y": np.zeros(4000, int), "x_test": np.zeros((1000, 40)),
                "y_test": np.zeros(1000, int)}

    import mnist1d.data as package

    monkeypatch.setattr(package, "make_dataset", fake_make_dataset)
    np.random.seed(123)
    random.seed(123)
    expected_np, expected_py = np.random.random(), random.random()
    np.random.seed(123)
    random.seed(123)
    m1d._generate(m1d._dataset_args(7))
    assert calls == [7]
    assert np.random.random() == expected_np and random.random() == expected_py
