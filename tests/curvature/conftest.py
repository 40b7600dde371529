"""Tiny float64 models and data whose dense Hessians are cheap to compute exactly.

The ``objective`` fixture runs a test on each reference problem; ``reference_hessian`` is that problem's
dense float64 Hessian, built once per test session (:func:`dense_hessian`) and handed out as a copy.
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from sharpscope import Objective, exact_hessian

PROBLEMS = ("mlp", "cnn-bn-eval", "cnn-bn-batch")


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


def make_objective(problem: str) -> Objective:
    """A fresh objective of the reference ``problem`` (one of :data:`PROBLEMS`)."""
    if problem == "mlp":
        return Objective(tiny_mlp(), nn.CrossEntropyLoss(), mlp_data(), batch_size=16)
    bn = problem.removeprefix("cnn-bn-")
    return Objective(tiny_bn_cnn(), nn.CrossEntropyLoss(), cnn_data(), bn=bn, batch_size=10)


@functools.cache
def _dense_hessian(problem: str) -> torch.Tensor:
    return exact_hessian(make_objective(problem))


def dense_hessian(problem: str) -> torch.Tensor:
    """The dense float64 Hessian of :func:`make_objective` ``(problem)``: computed on first use, then a copy
    of the cached matrix (a test may change its copy without touching the others')."""
    return _dense_hessian(problem).clone()


@pytest.fixture(params=PROBLEMS)
def problem(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def objective(problem: str) -> Objective:
    return make_objective(problem)


@pytest.fixture
def reference_hessian(problem: str) -> torch.Tensor:
    return dense_hessian(problem)
