"""The double-backward graph cache: exact, rebuilt when the model changes, refused for other modes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sharpscope import ConfigError, HessianOperator, Objective, exact_hessian, lanczos

from tests.curvature.conftest import cnn_data, tiny_bn_cnn


def test_cached_products_are_exact_and_follow_parameter_updates() -> None:
    model = tiny_bn_cnn()
    obj = Objective(model, nn.CrossEntropyLoss(), cnn_data(), bn="batch", batch_size=7)
    op = HessianOperator(obj, cache_graphs=True)
    assert op.mode == "rev-rev" and op.describe()["cache_graphs"] is True
    V = torch.randn(obj.dim, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    H = exact_hessian(obj)
    for _ in range(2):  # the second call reuses the graphs
        torch.testing.assert_close(op.matmat(V), H @ V, rtol=1e-10, atol=1e-12)
    graphs = op._graphs
    assert len(graphs) == 4
    torch.testing.assert_close(op.matvec(V[:, 0]), H @ V[:, 0], rtol=1e-10, atol=1e-12)
    assert op._graphs is graphs

    opt = torch.optim.SGD(model.parameters(), lr=0.5)  # an in-place update, as during training
    nn.CrossEntropyLoss()(model(cnn_data()[0]), cnn_data()[1]).backward()
    opt.step()
    H_new = exact_hessian(obj)
    assert torch.linalg.norm(H_new - H) > 1e-3 * torch.linalg.norm(H)
    torch.testing.assert_close(op.matmat(V), H_new @ V, rtol=1e-10, atol=1e-12)
    assert op._graphs is not graphs
    top = lanczos(op, k=2, tol=1e-10, seed=0)
    torch.testing.assert_close(top.eigenvalues, torch.linalg.eigvalsh(H_new).flip(0)[:2], rtol=1e-8, atol=1e-10)


def test_cache_requires_double_backward() -> None:
    obj = Objective(tiny_bn_cnn(), nn.CrossEntropyLoss(), cnn_data())
    with pytest.raises(ConfigError, match="cache_graphs needs mode='rev-rev'"):
        HessianOperator(obj, mode="fwd-rev", cache_graphs=True)
