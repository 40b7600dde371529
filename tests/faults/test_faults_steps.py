"""Two-pass steps that fail part-way leave nothing behind: the weights exactly, the BatchNorm running
statistics exactly, the optimizer not perturbed and usable (its next step equals an untouched twin's)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from sharpscope.optim import RS, SAM

pytestmark = pytest.mark.usefixtures("single_thread")


class Failure(Exception):
    pass


def bn_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 2)).double().train()


def batch() -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(12, 3, generator=g, dtype=torch.float64), torch.randn(12, 2, generator=g, dtype=torch.float64)


def state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}  # weights and BatchNorm buffers


def same(a: dict[str, Tensor], b: dict[str, Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def failing_on(call: int, loss: Callable[[nn.Module, Tensor, Tensor], Tensor]):  # type: ignore[no-untyped-def]
    """``loss`` that raises :class:`Failure` on its ``call``-th evaluation."""
    count = {"n": 0}

    def fn(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        count["n"] += 1
        if count["n"] == call:
            raise Failure
        return loss(model, x, y)
    return fn


def mse(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    return ((model(x) - y) ** 2).mean()


@pytest.mark.parametrize("call", [1, 2, 3, 4, 6])  # 4 passes per group of 4 examples: 6 is group 2's second pass
def test_m_sharpness_failing_in_any_pass_restores_weights_and_statistics(call: int) -> None:
    x, y = batch()
    model, twin = bn_net(), bn_net()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.05, momentum=0.9, model=model)
    ref = SAM(twin.parameters(), torch.optim.SGD, rho=0.1, lr=0.05, momentum=0.9, model=twin)
    before = state(model)
    with pytest.raises(Failure):
        opt.m_sharpness_step(model, failing_on(call, mse), x, y, m=4)
    assert same(state(model), before) and not opt.perturbed
    assert all(p.grad is None for p in model.parameters())
    assert opt.state_dict()["state"] == {}  # no base step was taken (no momentum buffer)
    # usable: the next step is bit-for-bit the step of a twin that never failed
    opt.m_sharpness_step(model, mse, x, y, m=4)
    ref.m_sharpness_step(twin, mse, x, y, m=4)
    assert same(state(model), state(twin))


def closure_failing_on(call: int, opt: torch.optim.Optimizer, model: nn.Module, x: Tensor, y: Tensor):  # type: ignore[no-untyped-def]
    count = {"n": 0}

    def closure() -> Tensor:
        count["n"] += 1
        if count["n"] == call:
            raise KeyboardInterrupt
        opt.zero_grad()
        loss = mse(model, x, y)
        loss.backward()
        return loss.detach()
    return closure


@pytest.mark.parametrize("make", [
    lambda m: SAM(m.parameters(), torch.optim.SGD, rho=0.1, lr=0.05, model=m),
    lambda m: RS(m.parameters(), lr=0.05, lr_perturb=0.01, rho=0.1, eps0=1e9, seed=3, model=m),
], ids=["SAM", "RS"])
def test_a_step_interrupted_in_its_second_pass_puts_the_batchnorm_statistics_back(make) -> None:  # type: ignore[no-untyped-def]
    x, y = batch()
    model = bn_net()
    opt = make(model)
    before = state(model)
    with pytest.raises(KeyboardInterrupt):
        opt.step(closure_failing_on(2, opt, model, x, y))  # the first pass ran and updated the statistics
    assert same(state(model), before) and not opt.perturbed
    assert int(model[1].num_batches_tracked) == 0
    opt.step(closure_failing_on(0, opt, model, x, y))
    assert int(model[1].num_batches_tracked) == 1  # a step that completes keeps its first pass's update
