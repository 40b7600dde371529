"""Small float64 models with known sharpness for the measures' tests."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sharpscope.curvature import Objective


class Quadratic(nn.Module):
    """``L(w) = ½ wᵀAw + bᵀw`` whatever the batch (its loss is a closure)."""

    def __init__(self, A: Tensor, b: Tensor, w: Tensor) -> None:
        super().__init__()
        self.register_buffer("A", A)
        self.register_buffer("b", b)
        self.w = nn.Parameter(w.clone())

    def value(self) -> Tensor:
        return 0.5 * self.w @ self.A @ self.w + self.b @ self.w


def quadratic_objective(A: Tensor, b: Tensor, w: Tensor) -> Objective:
    model = Quadratic(A, b, w)
    data = torch.zeros(4, 1, dtype=torch.float64)
    return Objective(model, None, data, closure=lambda m, batch: m.value(), validate=False)


def random_psd(d: int, seed: int) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    Q = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))[0]
    eig = torch.linspace(0.5, 4.0, d, dtype=torch.float64)
    return Q @ torch.diag(eig) @ Q.T


def relu_net(seed: int = 0, n: int = 24) -> tuple[nn.Module, Tensor, Tensor]:
    """A two-layer ReLU classifier in float64 with its data."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).double()
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(n, 4, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=gen)
    return model, x, y
