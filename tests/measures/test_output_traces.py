"""Jacobian and Gauss–Newton traces against explicit per-example Jacobians and a dense GGN."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sharpscope.curvature import Objective
from sharpscope.measures import SharpnessSettings, measure
from tests.measures.models import relu_net


def _flat_jacobian(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``∂f(x)/∂w`` of one output tensor, one autograd.grad per output element, rows over (examples, outputs)."""
    params = list(model.parameters())
    out = model(x).reshape(-1)
    rows = [torch.cat([g.reshape(-1) for g in torch.autograd.grad(o, params, retain_graph=True)]) for o in out]
    return torch.stack(rows)


def test_exact_jacobian_trace_equals_explicit_per_example_jacobians(single_thread: None) -> None:
    model, x, y = relu_net(1, n=10)
    objective = Objective(model, nn.CrossEntropyLoss(), (x, y), batch_size=4)
    result = measure("jacobian", objective, SharpnessSettings(block=6))
    explicit = sum(float((_flat_jacobian(model, x[i:i + 1]) ** 2).sum()) for i in range(10)) / 10
    assert result.value == pytest.approx(explicit, rel=1e-10)
    assert result.details["method"] == "exact per-example" and result.stderr is None
    assert result.forwards == 1 + 5 and result.backwards == 5 * 3  # chunks of 2 examples: 2 + 2 + 1, 3 outputs each


def test_exact_ggn_trace_equals_the_trace_of_a_dense_ggn(single_thread: None) -> None:
    model, x, y = relu_net(2, n=9)
    loss = nn.CrossEntropyLoss()
    objective = Objective(model, loss, (x, y), batch_size=5)
    result = measure("ggn", objective, SharpnessSettings(block=7))
    J = _flat_jacobian(model, x)  # (9·3, dim): cross entropy is per example, so one batch gives the same GGN
    out = model(x).detach()
    H = torch.autograd.functional.hessian(lambda o: loss(o, y), out).reshape(out.numel(), out.numel())
    assert result.value == pytest.approx(float(torch.trace(J.T @ H @ J)), rel=1e-10)
    assert result.details["method"] == "exact per-example"


def test_a_loss_that_couples_examples_takes_whole_batch_rows(single_thread: None) -> None:
    model, x, y = relu_net(4, n=8)

    def coupled(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # the batch's mean output in every term
        return nn.functional.cross_entropy(out - 0.5 * out.mean(0, keepdim=True), target)

    result = measure("ggn", Objective(model, coupled, (x, y), validate=False))
    J = _flat_jacobian(model, x)
    out = model(x).detach()
    H = torch.autograd.functional.hessian(lambda o: coupled(o, y), out).reshape(out.numel(), out.numel())
    assert result.details["method"] == "exact batch rows"
    assert result.value == pytest.approx(float(torch.trace(J.T @ H @ J)), rel=1e-10)


@pytest.mark.parametrize("name", ["jacobian", "ggn"])
def test_batchnorm_on_batch_statistics_couples_the_rows(name: str, single_thread: None) -> None:
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 2)).double()
    x = torch.randn(6, 4, dtype=torch.float64)
    y = torch.randint(0, 2, (6,))
    loss = nn.CrossEntropyLoss()
    result = measure(name, Objective(model, loss, (x, y), bn="batch"))
    model.train()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.track_running_stats = False  # normalise with the batch's statistics, buffers untouched
    J = _flat_jacobian(model, x)
    out = model(x).detach()
    H = (torch.autograd.functional.hessian(lambda o: loss(o, y), out).reshape(out.numel(), out.numel())
         if name == "ggn" else torch.eye(out.numel(), dtype=torch.float64) / 6)
    assert result.details["method"] == "exact batch rows"
    assert result.value == pytest.approx(float(torch.trace(J.T @ H @ J)), rel=1e-10)


@pytest.mark.parametrize("name", ["jacobian", "ggn"])
def test_stochastic_traces_agree_with_the_exact_ones(name: str, single_thread: None) -> None:
    model, x, y = relu_net(3)
    objective = Objective(model, nn.CrossEntropyLoss(), (x, y))
    exact = measure(name, objective).value
    for method in ("hutchinson", "hutch++"):
        estimate = measure(name, objective, SharpnessSettings(trace=method, matvecs=60, seed=4))  # type: ignore[arg-type]
        assert estimate.stderr is not None and estimate.stderr > 0
        assert abs(estimate.value - exact) <= 4 * estimate.stderr
        assert estimate.details["products"] == 60
