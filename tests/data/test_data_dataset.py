import pytest
import torch

from sharpscope.data import ArrayDataset
from sharpscope.errors import ConfigError, DataError


def make(n: int = 5) -> ArrayDataset:
    return ArrayDataset(torch.arange(2.0 * n).reshape(n, 2), torch.arange(n), "toy")


def test_len_and_subset_are_first_n() -> None:
    ds = make(5)
    sub = ds.subset(3)
    assert len(ds) == 5 and len(sub) == 3
    assert torch.equal(sub.x, ds.x[:3]) and torch.equal(sub.y, torch.arange(3))
    assert sub.name == "toy[:3]"
    assert ds.subset(5) is ds


@pytest.mark.parametrize("n", [0, -1, 2.5, True])
def test_subset_rejects_bad_sizes(n) -> None:
    with pytest.raises(ConfigError):
        make().subset(n)


def test_subset_larger_than_dataset() -> None:
    with pytest.raises(DataError, match="has 5 examples"):
        make().subset(6)


def test_length_mismatch_names_both_shapes() -> None:
    with pytest.raises(DataError, match=r"x has 3 examples but y has 2"):
        ArrayDataset(torch.zeros(3, 2), torch.zeros(2, dtype=torch.long), "bad")


def test_empty_and_non_tensor_rejected() -> None:
    with pytest.raises(DataError, match="empty"):
        ArrayDataset(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), "e")
    with pytest.raises(DataError, match="torch tensors"):
        ArrayDataset([[1.0]], torch.zeros(1), "l")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="example dimension"):
        ArrayDataset(torch.tensor(1.0), torch.tensor(1), "s")


def test_to_changes_float_dtype_but_keeps_integer_labels() -> None:
    ds = make().to(dtype=torch.float64)
    assert ds.x.dtype == torch.float64 and ds.y.dtype == torch.int64
    soft = ArrayDataset(torch.zeros(2, 3), torch.zeros(2, 3), "soft").to("cpu", torch.float64)
    assert soft.y.dtype == torch.float64
    with pytest.raises(ConfigError):
        make().to(dtype=torch.int32)


def test_frozen() -> None:
    ds = make()
    with pytest.raises(AttributeError):
        ds.name = "other"  # type: ignore[misc]
