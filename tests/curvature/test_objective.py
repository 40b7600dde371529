"""The objective: batching, parameter selection, BatchNorm modes, and clear errors on bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sharpscope import (
    ConfigError,
    DataError,
    HessianOperator,
    Objective,
    ObjectiveError,
    exact_hessian,
    lanczos,
)
from sharpscope.losses import mse
from tests.curvature.conftest import cnn_data, mlp_data, tiny_bn_cnn, tiny_mlp


def test_unequal_batches_give_the_same_operator() -> None:
    x, y = mlp_data(40)
    one = exact_hessian(Objective(tiny_mlp(), nn.CrossEntropyLoss(), (x, y)))
    cuts = [0, 3, 17, 18, 40]
    batches = [(x[a:b], y[a:b]) for a, b in zip(cuts, cuts[1:])]
    split = Objective(tiny_mlp(), nn.CrossEntropyLoss(), batches)
    torch.testing.assert_close(exact_hessian(split), one, rtol=1e-12, atol=1e-12)
    v = torch.randn(split.dim, dtype=torch.float64)
    torch.testing.assert_close(HessianOperator(split, mode="fwd-rev").matvec(v), one @ v, rtol=1e-10, atol=1e-12)


def test_frozen_and_unused_parameters() -> None:
    class WithSpare(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = tiny_mlp()
            self.unused = nn.Linear(4, 4).double()  # trainable but not in the graph: zero Hessian rows

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

    model = WithSpare()
    model.net[0].bias.requires_grad_(False)  # frozen: excluded
    obj = Objective(model, nn.CrossEntropyLoss(), mlp_data())
    assert "net.0.bias" not in obj.names and "unused.weight" in obj.names
    H = exact_hessian(obj)
    sl = slice(*[sum(obj.numels[: obj.names.index("unused.weight") + i]) for i in (0, 2)])
    for mode in ("fwd-rev", "rev-rev"):
        op = HessianOperator(obj, mode=mode)
        v = torch.randn(obj.dim, dtype=torch.float64)
        hv = op.matvec(v)
        torch.testing.assert_close(hv, H @ v, rtol=1e-10, atol=1e-12)
        assert hv[sl].abs().max() == 0


def test_parameter_filters_take_the_block_of_the_hessian() -> None:
    x, y = mlp_data()
    full_obj = Objective(tiny_mlp(), nn.CrossEntropyLoss(), (x, y))
    H = exact_hessian(full_obj)
    block = Objective(tiny_mlp(), nn.CrossEntropyLoss(), (x, y), params="2.*")
    assert block.names == ["2.weight", "2.bias"]
    start = sum(full_obj.numels[:2])
    torch.testing.assert_close(exact_hessian(block), H[start:, start:], rtol=1e-12, atol=1e-12)
    by_callable = Objective(tiny_mlp(), nn.CrossEntropyLoss(), (x, y), params=lambda n, p: n.endswith("bias"))
    assert by_callable.names == ["0.bias", "2.bias"]
    with pytest.raises(ConfigError, match="no trainable parameter matches"):
        Objective(tiny_mlp(), nn.CrossEntropyLoss(), (x, y), params="conv.*")


def test_batch_mode_leaves_buffers_and_flags_untouched() -> None:
    model = tiny_bn_cnn()
    model.train()
    model[1].momentum = 0.5
    before = {k: v.clone() for k, v in model.state_dict().items()}
    obj = Objective(model, nn.CrossEntropyLoss(), cnn_data(), bn="batch", batch_size=8)
    op = HessianOperator(obj)
    lanczos(op, k=2, tol=1e-6, seed=0)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert model.training and model[1].training and model[1].track_running_stats


def test_eval_and_batch_modes_are_different_objectives() -> None:
    data = cnn_data()
    h_eval = exact_hessian(Objective(tiny_bn_cnn(), nn.CrossEntropyLoss(), data, bn="eval"))
    h_batch = exact_hessian(Objective(tiny_bn_cnn(), nn.CrossEntropyLoss(), data, bn="batch"))
    assert torch.linalg.norm(h_eval - h_batch) > 1e-3 * torch.linalg.norm(h_eval)


def test_bad_inputs_fail_with_one_clear_error() -> None:
    model, loss = tiny_mlp(), nn.CrossEntropyLoss()
    x, y = mlp_data()
    with pytest.raises(DataError, match="empty"):
        Objective(model, loss, [])
    with pytest.raises(DataError, match="empty"):
        Objective(model, loss, (x[:0], y[:0]))
    with pytest.raises(DataError, match="40 inputs but 39 targets"):
        Objective(model, loss, (x, y[:-1]))
    with pytest.raises(ObjectiveError, match="loss is nan on batch 1"):
        bad = x.clone()
        bad[25, 0] = float("nan")
        Objective(model, loss, (bad, y), batch_size=20)
    with pytest.raises(ObjectiveError, match=r"output shape \(40, 3\) does not match target shape \(40, 2\)"):
        Objective(model, mse, (x, torch.zeros(40, 2, dtype=torch.float64)))
    with pytest.raises(ObjectiveError, match="loss_fn failed"):
        Objective(model, loss, (x, torch.full((40,), 7)))
    with pytest.raises(ConfigError, match="bn must be"):
        Objective(model, loss, (x, y), bn="train")
    op = HessianOperator(Objective(model, loss, (x, y)))
    with pytest.raises(ConfigError, match="k must be between 1 and the dimension"):
        lanczos(op, k=op.dim + 1)
    with pytest.raises(ConfigError, match="matvec expects"):
        op.matvec(torch.zeros(3))


def test_model_state_is_not_changed_by_measuring() -> None:
    model = tiny_mlp()
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    before = [p.detach().clone() for p in model.parameters()]
    op = HessianOperator(Objective(model, nn.CrossEntropyLoss(), mlp_data()), mode="rev-rev")
    lanczos(op, k=1, seed=0)
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p, b) and torch.equal(p.grad, torch.ones_like(p))
