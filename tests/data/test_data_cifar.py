import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from sharpscope.data import CIFAR10_MEAN, CIFAR10_STD, cifar10, cifar100, cifar_feature_stats, load_numpy_pickle
from sharpscope.errors import ConfigError, DataError


def nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x.transpose(0, 3, 1, 2).astype(np.float64) / 255.0)


def test_folder_raw_values_and_order(cifar10_folder) -> None:
    folder, raw = cifar10_folder
    ds = cifar10(folder, standardize=None)
    assert ds.x.shape == (60, 3, 32, 32) and ds.x.dtype == torch.float32
    assert torch.equal(ds.y, torch.from_numpy(raw["y"]))
    assert torch.allclose(ds.x.double(), nchw(raw["x"]), atol=1e-7)
    test = cifar10(folder, train=False, standardize=None)
    assert torch.allclose(test.x.double(), nchw(raw["x_test"]), atol=1e-7)


def test_parent_folder_is_accepted(cifar10_folder) -> None:
    folder, raw = cifar10_folder
    assert torch.equal(cifar10(folder.parent, n=3, standardize=None).y, torch.from_numpy(raw["y"][:3]))


def test_channel_standardization_matches_known_statistics(cifar10_folder) -> None:
    folder, raw = cifar10_folder
    ds = cifar10(folder)  # default: channel
    x01 = nchw(raw["x"])
    mean = torch.tensor(CIFAR10_MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD, dtype=torch.float64).view(1, 3, 1, 1)
    assert torch.allclose(ds.x.double(), (x01 - mean) / std, atol=1e-5)
    # per-channel statistics of the output follow exactly from those of the input
    out_mean = ds.x.double().mean((0, 2, 3))
    in_mean = x01.mean((0, 2, 3))
    assert torch.allclose(out_mean, (in_mean - mean.flatten()) / std.flatten(), atol=1e-5)
    out_std = ds.x.double().std((0, 2, 3), unbiased=False)
    assert torch.allclose(out_std, x01.std((0, 2, 3), unbiased=False) / std.flatten(), atol=1e-5)
    assert "known cifar10 channel statistics" in ds.meta["stats"]


def test_constant_image_maps_to_known_values(tmp_path: Path) -> None:
    x = np.zeros((2, 32, 32, 3), np.uint8)
    x[..., 0], x[..., 1], x[..., 2] = 0, 128, 255
    np.savez(tmp_path / "c.npz", x=x, y=np.array([0, 1]))
    ds = cifar10(tmp_path / "c.npz")
    expected = [(v / 255 - m) / s for v, m, s in zip((0, 128, 255), CIFAR10_MEAN, CIFAR10_STD)]
    for c in range(3):
        assert torch.allclose(ds.x[:, c], torch.full((2, 32, 32), expected[c], dtype=torch.float32), atol=1e-6)


def test_given_channel_stats(cifar10_folder) -> None:
    folder, raw = cifar10_folder
    ds = cifar10(folder, n=4, channel_stats=((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)))
    assert torch.allclose(ds.x.double(), (nchw(raw["x"][:4]) - 0.5) / 0.25, atol=1e-5)
    with pytest.raises(ConfigError, match="3 values"):
        cifar10(folder, channel_stats=((0.5, 0.5), (1, 1)))


def test_feature_standardization_uses_full_training_split(cifar10_folder) -> None:
    folder, raw = cifar10_folder
    full = cifar10(folder, standardize="feature", flatten=True)
    assert full.x.shape == (60, 3072)
    assert full.x.double().mean(0).abs().max() < 1e-5
    assert (full.x.double().std(0, unbiased=False) - 1).abs().max() < 1e-4
    # the first n keep the statistics of the full split (Cohen et al.), not their own
    sub = cifar10(folder, standardize="feature", flatten=True, n=20)
    assert torch.equal(sub.x, full.x[:20])
    assert "over 60 training images" in sub.meta["stats"]
    # the test split uses the training statistics
    x_train = raw["x"].transpose(0, 3, 1, 2).reshape(60, -1).astype(np.float64) / 255
    x_test = raw["x_test"].transpose(0, 3, 1, 2).reshape(10, -1).astype(np.float64) / 255
    expected = (x_test - x_train.mean(0)) / x_train.std(0)
    test = cifar10(folder, train=False, standardize="feature", flatten=True)
    assert np.allclose(test.x.numpy(), expected, atol=1e-5)
    # explicit statistics give the same
    stats = cifar_feature_stats(folder)
    assert stats[0].shape == (3072,)
    again = cifar10(folder, train=False, standardize="feature", flatten=True, feature_stats=stats)
    assert torch.allclose(again.x, test.x, atol=1e-6)


def test_flatten_is_chw_order(cifar10_folder) -> None:
    folder, _ = cifar10_folder
    a, b = cifar10(folder, n=5), cifar10(folder, n=5, flatten=True)
    assert torch.equal(b.x, a.x.reshape(5, -1))


def test_npz_and_folder_agree(cifar10_folder, tmp_path: Path) -> None:
    folder, raw = cifar10_folder
    np.savez(tmp_path / "c.npz", **raw)
    for train in (True, False):
        a = cifar10(folder, train=train, standardize="feature")
        b = cifar10(tmp_path / "c.npz", train=train, standardize="feature")
        assert torch.allclose(a.x, b.x, atol=1e-6) and torch.equal(a.y, b.y)


def test_one_split_npz(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    np.savez(tmp_path / "test.npz", x=rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8), y=np.arange(8) % 10)
    ds = cifar10(tmp_path / "test.npz", train=False, standardize="feature")
    assert len(ds) == 8 and "one-split file itself" in ds.meta["stats"]


def test_folder_skips_unneeded_batches(cifar10_folder) -> None:
    folder, raw = cifar10_folder
    (folder / "data_batch_5").write_bytes(b"garbage")  # never read for n <= 12
    assert torch.equal(cifar10(folder, n=12, standardize=None).y, torch.from_numpy(raw["y"][:12]))
    with pytest.raises(DataError, match="data_batch_5"):
        cifar10(folder)


def test_missing_batch_is_named(cifar10_folder) -> None:
    folder, _ = cifar10_folder
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match=r"missing \['data_batch_3'\]"):
        cifar10(folder)


def test_truncated_batch(cifar10_folder) -> None:
    folder, _ = cifar10_folder
    path = folder / "data_batch_1"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(DataError, match=r"data_batch_1: truncated"):
        cifar10(folder)


def test_wrong_shape_and_labels(cifar10_folder, write_cifar_batch) -> None:
    folder, _ = cifar10_folder
    bad = {b"data": np.zeros((4, 100), np.uint8), b"labels": [0, 1, 2, 3]}
    (folder / "data_batch_1").write_bytes(pickle.dumps(bad, protocol=2))
    with pytest.raises(DataError, match=r"data_batch_1: 'data' must be a uint8 array of shape \(N, 3072\), found uint8 array of shape \(4, 100\)"):
        cifar10(folder)
    write_cifar_batch(folder / "data_batch_1", np.zeros((3, 32, 32, 3), np.uint8), np.array([0, 10, 1]))
    with pytest.raises(DataError, match=r"data_batch_1.*label out of range: found 0..10, expected 0..9"):
        cifar10(folder)
    write_cifar_batch(folder / "data_batch_1", np.zeros((3, 32, 32, 3), np.uint8), np.array([0, 1]))
    with pytest.raises(DataError, match=r"labels have shape \(2,\), expected \(3,\)"):
        cifar10(folder)
    (folder / "data_batch_1").write_bytes(pickle.dumps({b"labels": [0]}, protocol=2))
    with pytest.raises(DataError, match="missing key 'data'"):
        cifar10(folder)


class _Marker:
    """Unpickling this creates a file: a stand-in for arbitrary code in a pickle."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_restricted_unpickler_refuses_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    folder = tmp_path / "cifar"
    folder.mkdir()
    (folder / "data_batch_1").write_bytes(pickle.dumps({b"data": _Marker(marker), b"labels": []}, protocol=2))
    for i in range(2, 6):
        (folder / f"data_batch_{i}").write_bytes(b"")
    with pytest.raises(DataError, match=r"data_batch_1: not a CIFAR python batch \(refused global"):
        cifar10(folder)
    assert not marker.exists()
    # the same pickle through plain pickle.load would have created the file
    pickle.loads((folder / "data_batch_1").read_bytes()).get(b"data").close()
    assert marker.exists()


def test_python2_style_numpy_globals_are_accepted(tmp_path: Path) -> None:
    arr = np.arange(6, dtype=np.uint8).reshape(2, 3)
    blob = pickle.dumps({b"data": arr}, protocol=2)
    legacy = blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray" in legacy
    (tmp_path / "b").write_bytes(legacy)
    assert np.array_equal(load_numpy_pickle(tmp_path / "b")[b"data"], arr)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_pickle_protocols(cifar10_folder, write_cifar_batch, protocol: int) -> None:
    folder, raw = cifar10_folder
    write_cifar_batch(folder / "data_batch_1", raw["x"][:12], raw["y"][:12], protocol=protocol)
    assert torch.equal(cifar10(folder, n=12).y, torch.from_numpy(raw["y"][:12]))


def test_npz_errors(tmp_path: Path) -> None:
    p = tmp_path / "c.npz"
    np.savez(p, images=np.zeros((2, 32, 32, 3), np.uint8), y=np.zeros(2, int))
    with pytest.raises(DataError, match=r"c.npz: missing array\(s\) \['x'\]; found \['images', 'y'\]"):
        cifar10(p)
    np.savez(p, x=np.zeros((2, 3, 32, 32), np.uint8), y=np.zeros(2, int))
    with pytest.raises(DataError, match=r"uint8 of shape \(N, 32, 32, 3\), found uint8 \(2, 3, 32, 32\)"):
        cifar10(p)
    np.savez(p, x=np.zeros((2, 32, 32, 3), np.float32), y=np.zeros(2, int))
    with pytest.raises(DataError, match="found float32"):
        cifar10(p)
    np.savez(p, x=np.zeros((2, 32, 32, 3), np.uint8), y=np.array([0.0, 1.0]))
    with pytest.raises(DataError, match="integer dtype"):
        cifar10(p)
    np.savez(p, x=np.zeros((2, 32, 32, 3), np.uint8), y=np.array([0, 1]))
    p.write_bytes(p.read_bytes()[:300])
    with pytest.raises(DataError, match="c.npz: truncated or corrupt"):
        cifar10(p)
    with pytest.raises(DataError, match="no such file"):
        cifar10(tmp_path / "absent.npz")
    np.savez(p, x=np.array([object()], dtype=object), y=np.array([0]))
    with pytest.raises(DataError, match="object arrays"):
        cifar10(p)


def test_bad_arguments(cifar10_folder) -> None:
    folder, _ = cifar10_folder
    with pytest.raises(ConfigError):
        cifar10(folder, standardize="pixel")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        cifar10(folder, n=0)
    with pytest.raises(DataError, match="has 10 images, asked for the first 11"):
        cifar10(folder, train=False, n=11)


def test_cifar100_fine_and_coarse(tmp_path: Path, write_cifar_batch) -> None:
    rng = np.random.default_rng(5)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    x = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    fine, coarse = np.array([0, 99, 5, 50, 7, 1]), np.array([0, 19, 3, 4, 5, 6])
    for name in ("train", "test"):
        write_cifar_batch(folder / name, x, fine, label_key="fine_labels", extra={b"coarse_labels": list(coarse)})
    ds = cifar100(tmp_path)
    assert torch.equal(ds.y, torch.from_numpy(fine)) and ds.meta["num_classes"] == 100
    assert torch.equal(cifar100(folder, labels="coarse", train=False).y, torch.from_numpy(coarse))
    write_cifar_batch(folder / "train", x, fine + 1, label_key="fine_labels")
    with pytest.raises(DataError, match="expected 0..99"):
        cifar100(folder)
