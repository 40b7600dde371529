"""The product mode chosen by timing is remembered per architecture, device, precision and batch shapes."""

from __future__ import annotations

import importlib

import pytest
import torch
from torch import nn

from sharpscope import HessianOperator, Objective

hessian_module = importlib.import_module("sharpscope.curvature.operators.hessian")


def mlp(width: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, width), nn.Tanh(), nn.Linear(width, 3)).double()


def data(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(n)
    return torch.randn(n, 6, generator=gen, dtype=torch.float64), torch.randint(0, 3, (n,), generator=gen)


def single_record(model: nn.Module, n: int, batch_size: int) -> dict[str, object]:
    op = HessianOperator(Objective(model, nn.CrossEntropyLoss(), data(n), batch_size=batch_size),
                         cache_graphs=False)
    op.matvec(torch.ones(op.dim, dtype=torch.float64))
    return op.describe()["mode_selection"]["probes=1"]


def test_a_second_operator_reuses_the_timed_choice_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hessian_module, "_TIMED_CHOICES", {})
    first = single_record(mlp(8), 40, 20)
    assert "remembered" not in first and set(first["trial_seconds_per_probe"]) == {"fwd-rev", "rev-rev"}
    again = single_record(mlp(8), 40, 20)  # same architecture and shapes, other data and operator
    assert again["remembered"] is True and again["chosen"] == first["chosen"]
    assert again["trial_seconds_per_probe"] == first["trial_seconds_per_probe"]


@pytest.mark.parametrize("width, n, batch_size", [(9, 40, 20), (8, 40, 10), (8, 41, 20)])
def test_another_architecture_or_batch_shape_is_timed_afresh(monkeypatch: pytest.MonkeyPatch, width: int, n: int,
                                                             batch_size: int) -> None:
    monkeypatch.setattr(hessian_module, "_TIMED_CHOICES", {})
    single_record(mlp(8), 40, 20)
    other = single_record(mlp(width), n, batch_size)
    assert "remembered" not in other and set(other["trial_seconds_per_probe"]) == {"fwd-rev", "rev-rev"}
