"""The smoothing identity E_u ∇f(x + ρu) − ∇f(x) = (ρ²/2)∇tr̄(x) on a quartic, where it is exact."""

from __future__ import annotations

import torch
from torch import nn

from sharpscope.experiments.smoothing import smoothing_identity


class Coordinates(nn.Module):
    """Outputs its own parameter vector, so the loss Σ a_i θ_i⁴ is a function of the parameters alone."""

    def __init__(self) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.tensor([0.05, -0.08, 0.12], dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.theta.expand(x.shape[0], -1)


def test_identity_on_a_quartic_converges_with_draws() -> None:
    """∇f is cubic, so the O(ρ³) term vanishes in expectation (E u_i = E u_i³ = 0) and the Hessian's trace
    gradient is exact with any probes for a diagonal Hessian: the cosine tends to 1 with the draws."""
    a = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    loss = lambda out, y: (a * out[0] ** 4).sum()  # noqa: E731
    x, y = torch.zeros(1, 1, dtype=torch.float64), torch.zeros(1)
    res = smoothing_identity(Coordinates(), loss, x, y, rhos=(0.1,), draws=4096, probes=4, counts=(16, 4096), seed=0)
    rows = res["rhos"]["0.1"]
    assert rows[-1]["draws"] == 4096 and rows[-1]["cosine"] > 0.99
    assert abs(rows[-1]["norm_ratio"] - 1) < 0.1
    assert res["dim"] == 3
