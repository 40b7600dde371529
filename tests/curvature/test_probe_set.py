"""The probe set on its own: batches, counts, weights and N, independent of any model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sharpscope.curvature import Objective
from sharpscope.curvature.operators.probe_set import ProbeSet
from sharpscope.errors import ConfigError, DataError

CPU = torch.device("cpu")


def test_split_counts_and_weights_are_those_of_the_rows() -> None:
    x, y = torch.randn(10, 3, dtype=torch.float64), torch.arange(10) % 2
    ps = ProbeSet((x, y), device=CPU, dtype=torch.float64, batch_size=4)
    assert ps.counts == [4, 4, 2] and ps.num_examples == 10 and ps.local_examples == 10
    assert ps.weights() == [0.4, 0.4, 0.2]
    assert torch.equal(torch.cat([b.x for b in ps.batches]), x) and torch.equal(torch.cat([b.y for b in ps.batches]), y)
    assert not ps.streamed and ps.stream_reason == "in-memory data"


def test_count_fn_counts_tokens_and_empty_batches_are_dropped() -> None:
    batches = [{"ids": torch.ones(2, 5), "mask": torch.tensor([[1, 1, 0, 0, 0], [1, 0, 0, 0, 0]])},
               {"ids": torch.ones(1, 5), "mask": torch.zeros(1, 5, dtype=torch.long)}]
    ps = ProbeSet(batches, device=CPU, dtype=torch.float32, count_fn=lambda b: b["mask"].sum())
    assert ps.counts == [3] and ps.num_examples == 3 and len(ps.batches) == 1


def test_recast_changes_floating_tensors_only() -> None:
    x, y = torch.randn(6, 2), torch.arange(6)
    ps = ProbeSet((x, y), device=CPU, dtype=torch.float32, batch_size=3)
    twin = ps.recast(torch.float64)
    assert twin.dtype == torch.float64 and ps.dtype == torch.float32
    assert all(b.x.dtype == torch.float64 and b.y.dtype == torch.long for b in twin.batches)
    assert all(b.x.dtype == torch.float32 for b in ps.batches) and twin.counts == ps.counts


def test_objective_reads_its_probe_set() -> None:
    x, y = torch.randn(7, 3), torch.arange(7) % 2
    obj = Objective(nn.Linear(3, 2), nn.CrossEntropyLoss(), (x, y), batch_size=3)
    assert isinstance(obj.probe_set, ProbeSet) and obj.counts == [3, 3, 1] and obj.num_examples == 7
    assert obj.weights() == obj.probe_set.weights() and obj.batches is obj.probe_set.batches


@pytest.mark.parametrize(("data", "kwargs", "error", "message"), [
    ((torch.randn(3, 2), torch.arange(4)), {}, DataError, "^data has 3 inputs but 4 targets$"),
    ((torch.randn(0, 2), torch.arange(0)), {}, DataError, "^the probe set is empty"),
    ([torch.randn(2, 2)], {"batch_size": 2}, ConfigError, "^batch_size applies to one tensor"),
    ((torch.randn(3, 2), torch.arange(3)), {"batch_size": 0}, ConfigError, "batch_size"),
    (iter([torch.randn(2, 2)]), {"stream": True}, ConfigError, "^stream=True needs data that can be read again"),
])
def test_bad_probe_sets_fail_with_one_line(data: object, kwargs: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        ProbeSet(data, device=CPU, dtype=torch.float32, **kwargs)
