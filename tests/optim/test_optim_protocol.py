"""One step protocol: ``step(closure)``, ``step_from_gradient(closure)``, ``restore()``, and the
exception safety of every optimizer that moves the weights (SAM, ASAM, Sparse SAM, RS, SA)."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from sharpscope.optim import RS, SA, SAM, PerturbedOptimizer, SparseSAM
from tests.optim.optim_helpers import data, flat, make_closure, mse, params_of, tiny_mlp

X, Y = data(n=12)


def _optimizers() -> dict[str, Callable[[torch.nn.Module], PerturbedOptimizer]]:
    return {
        "sam": lambda m: SAM(m.parameters(), torch.optim.SGD, rho=0.1, lr=0.05),
        "asam": lambda m: SAM(m.parameters(), torch.optim.SGD, rho=0.5, adaptive=True, lr=0.05),
        "sparse-sam": lambda m: SparseSAM(m.parameters(), torch.optim.SGD, rho=0.1, mask="random", sparsity=0.5,
                                          lr=0.05, seed=0),
        "rs": lambda m: RS(m.parameters(), 0.05, 0.1, 0.1, math.inf, seed=1),
        "sa": lambda m: SA(m.parameters(), 0.05, 0.1, 0.1, math.inf, num_examples=12, batch_size=3, seed=2),
    }


def _with_examples(opt: PerturbedOptimizer, model: torch.nn.Module) -> None:
    if isinstance(opt, SA):
        def example_closure(idx: torch.Tensor) -> torch.Tensor:
            opt.zero_grad()
            loss = mse(model, X[idx], Y[idx])
            loss.backward()
            return loss.detach()
        opt.set_example_closure(example_closure)


@pytest.mark.parametrize("name", list(_optimizers()))
def test_step_from_gradient_equals_step(name: str) -> None:
    """Running the first backward pass yourself and calling ``step_from_gradient`` takes the same step."""
    results = []
    for use_grad in (False, True):
        model = tiny_mlp()
        opt = _optimizers()[name](model)
        _with_examples(opt, model)
        closure = make_closure(opt, model, X, Y)
        for _ in range(3):
            if use_grad:
                with torch.enable_grad():
                    closure()
                opt.step_from_gradient(closure)
            else:
                opt.step(closure)
        results.append(flat(params_of(model)))
    assert torch.equal(results[0], results[1])


@pytest.mark.parametrize("name", list(_optimizers()))
def test_interrupted_step_restores_the_weights(name: str) -> None:
    """A closure that raises KeyboardInterrupt at a moved point leaves w exactly and the optimizer usable."""
    model = tiny_mlp()
    opt = _optimizers()[name](model)
    _with_examples(opt, model)
    inner = make_closure(opt, model, X, Y)
    calls = {"n": 0}

    def closure() -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return inner()

    if isinstance(opt, SA):  # SA's second evaluation is of its example batch
        ex = opt.example_closure
        assert ex is not None
        hits = {"n": 0}

        def interrupted(idx: torch.Tensor) -> torch.Tensor:
            hits["n"] += 1
            if hits["n"] == 2:
                raise KeyboardInterrupt
            return ex(idx)
        opt.set_example_closure(interrupted)
    before = flat(params_of(model))
    with pytest.raises(KeyboardInterrupt):
        opt.step(closure)
    assert torch.equal(flat(params_of(model)), before)
    assert not opt.perturbed
    opt.state_dict()  # refuses while perturbed
    calls["n"] = 10
    if isinstance(opt, SA):
        opt.set_example_closure(ex)
    opt.step(closure)  # the next step works
    assert not torch.equal(flat(params_of(model)), before)


def test_restore_after_first_step() -> None:
    model = tiny_mlp()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.05)
    before = flat(params_of(model))
    with torch.enable_grad():
        make_closure(opt, model, X, Y)()
    opt.first_step()
    assert opt.perturbed and not torch.equal(flat(params_of(model)), before)
    opt.restore()
    assert not opt.perturbed and torch.equal(flat(params_of(model)), before)
