"""Shared helpers for the sharpscope.optim tests: tiny float64 models and a functional loss."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call


def tiny_mlp(seed: int = 0, d_in: int = 4, width: int = 6, d_out: int = 2) -> nn.Module:
    torch.manual_seed(seed)  # only the model init; the optimizers never touch the global RNG
    return nn.Sequential(nn.Linear(d_in, width), nn.Tanh(), nn.Linear(width, d_out)).double()


def data(seed: int = 1, n: int = 12, d_in: int = 4, d_out: int = 2) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d_in, generator=g, dtype=torch.float64),
            torch.randn(n, d_out, generator=g, dtype=torch.float64))


def mse(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    return ((model(x) - y) ** 2).mean()


def loss_at(model: nn.Module, values: Sequence[Tensor], x: Tensor, y: Tensor) -> Tensor:
    """Loss with the model's parameters replaced by ``values`` (same order as parameters())."""
    names = [n for n, _ in model.named_parameters()]
    return ((functional_call(model, dict(zip(names, values)), (x,)) - y) ** 2).mean()


def grad_at(model: nn.Module, values: Sequence[Tensor], x: Tensor, y: Tensor) -> list[Tensor]:
    vals = [v.detach().clone().requires_grad_(True) for v in values]
    return list(torch.autograd.grad(loss_at(model, vals, x, y), vals))


def params_of(model: nn.Module) -> list[Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def make_closure(opt: torch.optim.Optimizer, model: nn.Module, x: Tensor, y: Tensor) -> Callable[[], Tensor]:
    def closure() -> Tensor:
        opt.zero_grad()
        loss = mse(model, x, y)
        loss.backward()
        return loss.detach()

    return closure


def flat(ts: Sequence[Tensor]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in ts])
