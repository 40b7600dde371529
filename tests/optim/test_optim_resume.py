"""Saving and loading optimizer state mid-run gives the same next step bit for bit (CPU)."""

from __future__ import annotations

import io
from collections.abc import Callable

import pytest
import torch
from torch import nn

from sharpscope.optim import RS, SA, SAM, SparseSAM
from tests.optim.optim_helpers import data, flat, make_closure, mse, params_of, tiny_mlp

X, Y = data(n=12)


def _example_closure(opt: torch.optim.Optimizer, model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    def closure(idx: torch.Tensor) -> torch.Tensor:
        opt.zero_grad()
        loss = mse(model, X[idx], Y[idx])
        loss.backward()
        return loss.detach()

    return closure


def _fisher_scores(model: nn.Module) -> Callable[[], list[torch.Tensor]]:
    from sharpscope.optim import empirical_fisher_diagonal

    return lambda: empirical_fisher_diagonal(model, mse, X[:4], Y[:4])


FACTORIES: dict[str, Callable[[nn.Module], torch.optim.Optimizer]] = {
    "sam_sgd_nesterov": lambda m: SAM(m.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9,
                                      nesterov=True, weight_decay=1e-3),
    "asam_adam": lambda m: SAM(m.parameters(), torch.optim.Adam, rho=0.5, adaptive=True, lr=1e-2),
    "sam_pinf_adamw": lambda m: SAM(m.parameters(), torch.optim.AdamW, rho=0.01, p=float("inf"), lr=1e-2),
    "ssam_dynamic": lambda m: SparseSAM(m.parameters(), torch.optim.SGD, rho=0.05, mask="dynamic", sparsity=0.5,
                                        total_steps=10, update_interval=1, lr=0.1, momentum=0.9, seed=3),
    "ssam_fisher": lambda m: SparseSAM(m.parameters(), torch.optim.SGD, rho=0.05, mask="fisher", sparsity=0.5,
                                       update_interval=2, score_fn=_fisher_scores(m), lr=0.1),
    "ssam_random_redraw": lambda m: SparseSAM(m.parameters(), torch.optim.SGD, rho=0.05, mask="random",
                                              sparsity=0.3, update_interval=1, lr=0.1, seed=7),
    "rs": lambda m: RS(m.parameters(), 0.05, 0.1, 0.1, float("inf"), seed=1),
    "sa_b2": lambda m: SA(m.parameters(), 0.05, 0.1, 0.1, float("inf"), num_examples=12, batch_size=2, seed=2),
}


def _one_step(opt: torch.optim.Optimizer, model: nn.Module) -> None:
    if isinstance(opt, SA):
        opt.set_example_closure(_example_closure(opt, model))
        opt.step(make_closure(opt, model, X, Y))
    else:
        opt.step(make_closure(opt, model, X, Y))


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_resume_gives_identical_next_steps(name: str) -> None:
    factory = FACTORIES[name]
    model = tiny_mlp()
    opt = factory(model)
    for _ in range(3):
        _one_step(opt, model)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    for _ in range(2):  # the uninterrupted run
        _one_step(opt, model)
    expected = flat(params_of(model))

    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    model2 = tiny_mlp(seed=99)  # different init: everything must come from the checkpoint
    opt2 = factory(model2)
    model2.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["opt"])
    for _ in range(2):
        _one_step(opt2, model2)
    assert torch.equal(flat(params_of(model2)), expected)
    if isinstance(opt, SparseSAM):
        assert all(torch.equal(a, b) for a, b in zip(opt.masks, opt2.masks))


def test_resume_without_the_extras_would_differ() -> None:
    # sanity check that the generator state matters (so the test above can fail)
    model = tiny_mlp()
    opt = FACTORIES["rs"](model)
    for _ in range(3):
        _one_step(opt, model)
    sd = opt.state_dict()
    sd.pop("sharpscope")
    model_state = {k: v.clone() for k, v in model.state_dict().items()}
    _one_step(opt, model)
    expected = flat(params_of(model))
    model2 = tiny_mlp()
    model2.load_state_dict(model_state)
    opt2 = FACTORIES["rs"](model2)
    opt2.load_state_dict(sd)
    _one_step(opt2, model2)
    assert not torch.equal(flat(params_of(model2)), expected)
