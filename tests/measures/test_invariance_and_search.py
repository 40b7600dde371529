"""Adaptive measures ignore ReLU rescalings; the ascent reaches at least what a dense search finds."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sharpscope.curvature import Objective
from sharpscope.measures import SharpnessSettings, measure
from tests.measures.models import relu_net


def _rescaled(model: nn.Module, c: float) -> nn.Module:
    """``W1·c, b1·c, W2/c``: the same function (ReLU is positively homogeneous)."""
    twin = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).double()
    twin.load_state_dict(model.state_dict())
    with torch.no_grad():
        twin[0].weight.mul_(c)
        twin[0].bias.mul_(c)
        twin[2].weight.div_(c)
    return twin


@pytest.mark.parametrize(("name", "settings"), [
    ("worst", SharpnessSettings(rho=0.1, steps=10)),
    ("worst", SharpnessSettings(rho=0.05, norm="linf", steps=10)),
    ("average", SharpnessSettings(rho=0.3, samples=8)),
    ("pacbayes", SharpnessSettings(samples=8, tol=0.05)),
])
def test_adaptive_forms_are_invariant_and_plain_forms_are_not(name: str, settings: SharpnessSettings,
                                                              single_thread: None) -> None:
    model, x, y = relu_net(0)
    twin = _rescaled(model, 5.0)
    loss = nn.CrossEntropyLoss()
    assert torch.allclose(model(x), twin(x), rtol=1e-12, atol=1e-12)
    adaptive = SharpnessSettings(**{**settings.__dict__, "adaptive": True})
    values = {kind: [measure(name, Objective(net, loss, (x, y)), s).value for net in (model, twin)]
              for kind, s in (("plain", settings), ("adaptive", adaptive))}
    assert values["adaptive"][1] == pytest.approx(values["adaptive"][0], rel=1e-8)
    assert values["adaptive"][0] > 0
    plain = values["plain"]
    assert abs(math.log(plain[1] / plain[0])) > 0.1  # the plain measure moves with the rescaling


def test_ascent_reaches_a_dense_search_on_a_two_parameter_model(single_thread: None) -> None:
    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.tensor([0.8, -1.3], dtype=torch.float64))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.w[1] * torch.tanh(self.w[0] * x)

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(32, 1, generator=gen, dtype=torch.float64)
    y = torch.sin(2 * x)
    model = Tiny()
    objective = Objective(model, nn.MSELoss(), (x, y))
    rho = 0.6
    grid = torch.linspace(-rho, rho, 161, dtype=torch.float64)
    Z = torch.cartesian_prod(grid, grid)
    losses, _ = objective.evaluate(objective.parameter_vector() + Z, accuracy=False)
    base = float(objective.loss())
    for norm, inside in (("l2", Z.norm(dim=1) <= rho), ("linf", torch.ones(len(Z), dtype=torch.bool))):
        searched = float(losses[inside].max()) - base
        result = measure("worst", objective, SharpnessSettings(rho=rho, norm=norm, steps=40, restarts=3))  # type: ignore[arg-type]
        assert result.value >= searched - 1e-12 * abs(searched)
        assert result.value <= searched + 0.02 * searched  # the grid is dense: no far better point exists
