"""Tiny float64 models and data whose dense Hessians are cheap to compute exactly."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sharpscope import Objective


def tiny_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()


def tiny_bn_cnn() -> nn.Module:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 4 * 4, 3))
    model = model.double()
    with torch.no_grad():  # non-trivial running statistics, so eval and batch modes differ
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 2.0)
    return model


def mlp_data(n: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(2)
    return torch.randn(n, 5, generator=gen, dtype=torch.float64), torch.randint(0, 3, (n,), generator=gen)


def cnn_data(n: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    return torch.randn(n, 2, 6, 6, generator=gen, dtype=torch.float64), torch.randint(0, 3, (n,), generator=gen)


@pytest.fixture(params=["mlp", "cnn-bn-eval", "cnn-bn-batch"])
def objective(request: pytest.FixtureRequest) -> Objective:
    if request.param == "mlp":
        return Objective(tiny_mlp(), nn.CrossEntropyLoss(), mlp_data(), batch_size=16)
    bn = request.param.removeprefix("cnn-bn-")
    return Objective(tiny_bn_cnn(), nn.CrossEntropyLoss(), cnn_data(), bn=bn, batch_size=10)
