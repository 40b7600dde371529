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


def test_auto_cache_is_chosen_when_it_fits_and_gives_the_same_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_bn_cnn()
    obj = Objective(model, nn.CrossEntropyLoss(), cnn_data(), bn="batch", batch_size=7)
    V = torch.randn(obj.dim, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    forced = HessianOperator(obj, mode="rev-rev", cache_graphs=False).matmat(V)
    auto = HessianOperator(obj)
    assert auto.describe()["cache_graphs"] == "auto (not yet chosen)"
    torch.testing.assert_close(auto.matmat(V), forced, rtol=1e-13, atol=1e-15)
    record = auto.describe()["mode_selection"]["cache_graphs"]
    assert record["chosen"] is True and auto.cache_graphs and auto.mode == "rev-rev" and len(auto._graphs) == 4
    assert record["estimate_bytes"] > 0
    top = lanczos(auto, k=2, tol=1e-10, seed=0)
    torch.testing.assert_close(top.eigenvalues, torch.linalg.eigvalsh(exact_hessian(obj)).flip(0)[:2],
                               rtol=1e-8, atol=1e-10)

    monkeypatch.setattr("sharpscope.curvature.operators.hessian.available_bytes", lambda device: 1000)
    tight = HessianOperator(obj)
    torch.testing.assert_close(tight.matmat(V), forced, rtol=1e-10, atol=1e-12)
    record = tight.describe()["mode_selection"]["cache_graphs"]
    assert record["chosen"] is False and not tight.cache_graphs and tight._graphs == []
    assert record["estimate_bytes"] > 500  # what did not fit is recorded
    timing = tight.describe()["mode_selection"]["probes=3"]  # without the cache, "auto" times the modes
    assert timing["chosen"] in ("fwd-rev", "rev-rev") and timing["how"] != "decided from architecture"


def test_graph_memory_estimate_counts_the_activations() -> None:
    from sharpscope.curvature.operators.hvp import measured_gradient_graph

    width, n = 64, 50
    model = nn.Sequential(nn.Linear(8, width), nn.Tanh(), nn.Linear(width, 3)).double()
    x, y = torch.randn(n, 8, dtype=torch.float64), torch.randint(0, 3, (n,))
    obj = Objective(model, nn.CrossEntropyLoss(), (x, y))
    params = {k: p.detach() for k, p in obj.params.items()}
    with obj.mode():
        _, nbytes = measured_gradient_graph(obj, params, obj.batches[0])
    # at least the hidden activations (n × width) and the gradient (dim), each in float64
    assert nbytes >= 8 * (n * width + obj.dim)


def test_a_fixed_product_mode_turns_the_automatic_cache_off() -> None:
    obj = Objective(tiny_bn_cnn(), nn.CrossEntropyLoss(), cnn_data())
    op = HessianOperator(obj, mode="fwd-rev")
    assert not op.cache_graphs and op.describe()["mode_selection"]["cache_graphs"]["chosen"] is False
    with pytest.raises(ConfigError, match="cache_graphs must be"):
        HessianOperator(obj, cache_graphs="yes")  # type: ignore[arg-type]


def test_a_requested_cache_takes_double_backward_on_natively_computed_bf16_weights() -> None:
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 3, generator=gen), torch.randn(16, 1, generator=gen)
    model = nn.Linear(3, 1).to(torch.bfloat16)
    loss = nn.MSELoss()
    v = torch.randn(4, generator=gen)
    auto = HessianOperator(Objective(model, loss, (x, y), weight_precision="native"), cache_graphs=True)
    fixed = HessianOperator(Objective(model, loss, (x, y), weight_precision="native"), mode="rev-rev",
                            cache_graphs=True)
    assert torch.equal(auto.matvec(v), fixed.matvec(v))
    assert auto.mode == "rev-rev" and auto.cache_graphs and auto.precision_record()["mode"] == "rev-rev"
    assert auto.describe()["mode_selection"] == {"cache_graphs": {"chosen": "rev-rev", "reason": "graph cache requested"}}
    default = HessianOperator(Objective(model, loss, (x, y), weight_precision="native"))
    assert default.mode == "fd" and default.describe()["mode_selection"]["cache_graphs"]["chosen"] is False
