"""Stability of the actual optimizers on quadratics with known Hessians.

SAM-edge setting. The SAM-edge is derived for the SAM map linearised with the gradient norm ‖g‖
held fixed. We realise that with a quadratic whose gradient has a large constant component
orthogonal to the curved directions::

    L(w) = ½ Σ_i λ_i w_i² + G · w_4,     H = diag(λ1, λ2, λ3, 0)

so ∇L = (λ1 w1, λ2 w2, λ3 w3, G) and ‖∇L‖² = G² + Σ(λ_i w_i)². Starting from |w_i| ~ 1e-8 the
curved components stay tiny over the run, so ‖g‖ = G to ~1e-10 relative: exactly the fixed-norm
linearisation. SAM's ascent ε = ρ∇L/‖∇L‖ then moves w_i by ρλ_i w_i/G, and the gradient at
w + ε along direction i is λ_i w_i (1 + ρλ_i/G), so each step multiplies w_i by
1 − ηλ_i(1 + ρλ_i/G) — stable iff λ_i < sam_edge(η, ρ, G). The constant slope along w_4 only
translates w_4 (H has no curvature there) and never feeds back. H is diagonal so that H·w is
exact in floating point (a rotated H would leak rounding from the large w_4 into the curved
directions). We drive the real ``SAM`` class and check λ1 = 0.99·edge decays while 1.01·edge
blows up; the other eigenvalues (0.5λ1, 0.1λ1) are stable throughout.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sharpscope.optim import SAM
from sharpscope.thresholds import ema_momentum_edge, gd_edge, momentum_edge, sam_edge

ETA, RHO, STEPS = 0.01, 0.05, 400


class Quadratic(nn.Module):
    def __init__(self, lam1: float, slope: float) -> None:
        super().__init__()
        self.h = torch.tensor([lam1, 0.5 * lam1, 0.1 * lam1, 0.0], dtype=torch.float64)
        self.c = torch.tensor([0.0, 0.0, 0.0, slope], dtype=torch.float64)
        self.w = nn.Parameter(torch.tensor([1e-8, -1e-8, 1e-8, 3.0], dtype=torch.float64))

    def forward(self) -> torch.Tensor:
        return 0.5 * (self.h * self.w**2).sum() + self.c @ self.w


def _growth(opt_factory, lam1: float, slope: float) -> float:
    model = Quadratic(lam1, slope)
    opt = opt_factory(model.parameters())

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = model()
        loss.backward()
        return loss

    for _ in range(STEPS):
        opt.step(closure)
    return abs(float(model.w.detach()[0])) / 1e-8


@pytest.mark.parametrize("g_norm", [10.0, 1.0, 0.1])
def test_sam_is_stable_exactly_below_the_sam_edge(g_norm: float) -> None:
    edge = sam_edge(ETA, RHO, g_norm)
    sam = lambda ps: SAM(ps, torch.optim.SGD, rho=RHO, lr=ETA)  # noqa: E731
    assert _growth(sam, 0.99 * edge, g_norm) < 1e-2
    assert _growth(sam, 1.01 * edge, g_norm) > 1e2
    # GD at the same curvature is stable: the SAM-edge is strictly below 2/η
    gd = lambda ps: torch.optim.SGD(ps, lr=ETA)  # noqa: E731
    assert _growth(gd, 1.01 * edge, g_norm) < 1e-2


@pytest.mark.parametrize("factory", [
    lambda ps: torch.optim.SGD(ps, lr=ETA),
    lambda ps: SAM(ps, torch.optim.SGD, rho=0.0, lr=ETA),
])
def test_gd_is_stable_exactly_below_two_over_eta(factory) -> None:
    assert _growth(factory, 0.99 * gd_edge(ETA), 1.0) < 1e-2
    assert _growth(factory, 1.01 * gd_edge(ETA), 1.0) > 1e2


@pytest.mark.parametrize(("kwargs", "edge"), [
    ({"momentum": 0.9}, momentum_edge(ETA, 0.9)),
    ({"momentum": 0.9, "nesterov": True}, momentum_edge(ETA, 0.9, nesterov=True)),
    ({"momentum": 0.9, "dampening": 0.9}, ema_momentum_edge(ETA, 0.9)),
])
def test_torch_momentum_thresholds(kwargs: dict, edge: float) -> None:
    factory = lambda ps: torch.optim.SGD(ps, lr=ETA, **kwargs)  # noqa: E731
    assert _growth(factory, 0.99 * edge, 0.0) < 1e-2
    assert _growth(factory, 1.01 * edge, 0.0) > 1e2


def test_torch_sgd_updates_are_the_documented_ones() -> None:
    """The update table in sharpscope.optim's docstring, checked against torch.optim.SGD."""
    lam, beta, steps = 3.0, 0.8, 6
    for nesterov, dampening in ((False, 0.0), (True, 0.0), (False, beta)):
        w = nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
        opt = torch.optim.SGD([w], lr=ETA * 10, momentum=beta, nesterov=nesterov, dampening=dampening)
        x, b = 1.0, None
        for _ in range(steps):
            opt.zero_grad()
            (0.5 * lam * w**2).sum().backward()
            opt.step()
            g = lam * x
            b = g if b is None else beta * b + (1 - dampening) * g  # torch: b₁ = g
            x -= ETA * 10 * ((g + beta * b) if nesterov else b)
        assert float(w.detach()) == pytest.approx(x, rel=1e-13)


@pytest.mark.parametrize("g_norm", [10.0, 0.1])
def test_sam_over_heavy_ball_is_stable_exactly_below_its_edge(g_norm: float) -> None:
    """The momentum form of the SAM-edge ((2+2β)/η in place of 2/η in the same linearisation) is where the
    real SAM over torch's heavy-ball SGD turns unstable; the edge without momentum is below it."""
    edge = sam_edge(ETA, RHO, g_norm, momentum=0.9)
    sam = lambda ps: SAM(ps, torch.optim.SGD, rho=RHO, lr=ETA, momentum=0.9)  # noqa: E731
    assert _growth(sam, 0.99 * edge, g_norm) < 1e-2
    assert _growth(sam, 1.01 * edge, g_norm) > 1e2
    assert _growth(sam, 1.05 * sam_edge(ETA, RHO, g_norm), g_norm) < 1e-2  # the edge without momentum is not it
