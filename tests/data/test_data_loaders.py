import json

import pytest
import torch

from sharpscope.data import ArrayDataset, ShuffledLoader, batches
from sharpscope.errors import ConfigError


def data(n: int = 10) -> ArrayDataset:
    return ArrayDataset(torch.arange(n, dtype=torch.float32)[:, None], torch.arange(n), "toy")


def test_batches_in_order() -> None:
    out = list(batches(data(10), 4))
    assert [len(y) for _, y in out] == [4, 4, 2]
    assert torch.equal(torch.cat([y for _, y in out]), torch.arange(10))
    with pytest.raises(ConfigError):
        list(batches(data(), 0))


def test_each_epoch_is_a_permutation() -> None:
    loader = ShuffledLoader(data(10), 3, torch.Generator().manual_seed(0))
    assert len(loader) == 4
    e1 = torch.cat([y for _, y in loader])
    e2 = torch.cat([y for _, y in loader])
    assert sorted(e1.tolist()) == list(range(10)) and sorted(e2.tolist()) == list(range(10))
    assert not torch.equal(e1, e2) and loader.epoch == 1
    # x and y stay paired
    for x, y in loader:
        assert torch.equal(x[:, 0].long(), y)


def test_drop_last() -> None:
    loader = ShuffledLoader(data(10), 3, torch.Generator().manual_seed(0), drop_last=True)
    assert len(loader) == 3 and [len(y) for _, y in loader] == [3, 3, 3]
    with pytest.raises(ConfigError):
        ShuffledLoader(data(2), 3, torch.Generator(), drop_last=True)


def test_same_seed_same_order() -> None:
    a = [y for _, y in ShuffledLoader(data(), 4, torch.Generator().manual_seed(5))]
    b = [y for _, y in ShuffledLoader(data(), 4, torch.Generator().manual_seed(5))]
    assert all(torch.equal(p, q) for p, q in zip(a, b))


@pytest.mark.parametrize("served", [0, 2, 4, 7])
def test_resume_gives_identical_batches(served: int) -> None:
    original = ShuffledLoader(data(10), 3, torch.Generator().manual_seed(11))
    for _ in range(served):
        original.next_batch()
    state = json.loads(json.dumps(original.state_dict()))  # must survive JSON
    expected = [original.next_batch()[1] for _ in range(10)]
    resumed = ShuffledLoader(data(10), 3, torch.Generator().manual_seed(999))
    resumed.load_state_dict(state)
    got = [resumed.next_batch()[1] for _ in range(10)]
    assert all(torch.equal(p, q) for p, q in zip(expected, got))


def test_resume_then_iterate_rest_of_epoch() -> None:
    original = ShuffledLoader(data(10), 4, torch.Generator().manual_seed(1))
    it = iter(original)
    first = next(it)[1]
    state = original.state_dict()
    rest = [y for _, y in it]
    resumed = ShuffledLoader(data(10), 4, torch.Generator())
    resumed.load_state_dict(state)
    got = [y for _, y in resumed]
    assert len(got) == 2 and all(torch.equal(p, q) for p, q in zip(rest, got))
    assert sorted(torch.cat([first, *got]).tolist()) == list(range(10))


def test_state_for_other_settings_is_refused() -> None:
    state = ShuffledLoader(data(10), 3, torch.Generator()).state_dict()
    with pytest.raises(ConfigError, match="batch_size"):
        ShuffledLoader(data(10), 4, torch.Generator()).load_state_dict(state)
    with pytest.raises(ConfigError):
        ShuffledLoader(data(10), 3, torch.Generator()).load_state_dict({"epoch": 0})
