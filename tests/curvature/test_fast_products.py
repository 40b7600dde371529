"""Fast and compiled products: bfloat16 and TF32 arithmetic report their measured deviation from strict
products, and ``torch.compile``'d products equal eager ones in float64."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

from sharpscope import ConfigError, HessianOperator, Objective, lanczos
from tests.curvature.conftest import mlp_data, tiny_mlp


def float32_problem() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    x, y = mlp_data()
    return tiny_mlp().float(), x.float(), y


def check_vector(dim: int) -> torch.Tensor:
    """The vector the operator checks its products on: Gaussian from seed 0, drawn in float64."""
    return torch.randn(1, dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)[0]


def double_backward(model: nn.Module, x: torch.Tensor, y: torch.Tensor, v: torch.Tensor, *, bf16: bool) -> torch.Tensor:
    """``H v`` by plain autograd on the model's own parameters, under bfloat16 autocast or not."""
    params = list(model.parameters())
    pieces = torch.split(v, [p.numel() for p in params])
    context = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with context:
        loss = nn.functional.cross_entropy(model(x), y)
        grads = torch.autograd.grad(loss, params, create_graph=True)
        hv = torch.autograd.grad(grads, params, grad_outputs=[t.view_as(p) for t, p in zip(pieces, params)])
    return torch.cat([h.reshape(-1) for h in hv]).detach()


def test_bf16_reports_its_measured_deviation() -> None:
    model, x, y = float32_problem()
    op = HessianOperator(Objective(model, nn.CrossEntropyLoss(), (x, y)), mode="rev-rev", cache_graphs=False,
                         precision="bf16")
    assert op.precision_record()["deviation"] is None  # nothing measured before the first product
    res = lanczos(op, k=1, tol=1e-2, seed=0)
    record = res.settings["product_precision"]
    assert record["precision"] == "bf16" and record["hvps"] == 2 and op.describe()["product_precision"] == record
    v = check_vector(op.dim).float()
    strict, fast = double_backward(model, x, y, v, bf16=False), double_backward(model, x, y, v, bf16=True)
    independent = float((fast.double() - strict.double()).norm() / strict.double().norm())
    assert 1e-4 < independent < 0.1  # bfloat16 keeps 8 mantissa bits: errors of about 1e-3, not zero
    assert record["deviation"] == pytest.approx(independent, rel=1e-3)
    # the products it then used are the bf16 ones
    assert float((op.matvec(v) - fast).norm()) < 1e-3 * float(fast.norm())


def test_strict_and_tf32_records() -> None:
    model, x, y = float32_problem()
    objective = Objective(model, nn.CrossEntropyLoss(), (x, y))
    op = HessianOperator(objective, mode="rev-rev")
    record = lanczos(op, k=1, tol=1e-2, seed=0).settings["product_precision"]
    assert record["precision"] == "strict" and record["deviation"] is None and "reference" in record["reason"]
    tf32 = HessianOperator(objective, mode="rev-rev", precision="tf32")
    assert tf32.precision == "tf32" and tf32.describe()["product_precision"]["precision"] == "tf32"
    tf32.matvec(check_vector(op.dim).float())
    assert tf32.precision_record()["deviation"] < 1e-6  # the CPU has no TF32 path: equal to strict
    for kwargs, message in ((dict(precision="fp8"), "precision must be"),
                            (dict(compile=True, mode="rev-rev"), "double backward"),
                            (dict(compile=True, cache_graphs=True), "cache_graphs"),
                            (dict(compile="yes"), "compile must be")):
        with pytest.raises(ConfigError, match=message):
            HessianOperator(objective, **kwargs)
    with pytest.raises(ConfigError, match="float64"):
        HessianOperator(Objective(tiny_mlp(), nn.CrossEntropyLoss(), mlp_data()), precision="bf16")


def compiled_pair() -> tuple[HessianOperator, HessianOperator]:
    x, y = mlp_data(12)
    objective = Objective(tiny_mlp(), nn.CrossEntropyLoss(), (x, y))  # one batch: one shape to compile
    return HessianOperator(objective, compile=True), HessianOperator(objective, mode="fwd-rev")


def test_compiled_product_equals_eager_in_float64() -> None:
    compiled, eager = compiled_pair()
    v = torch.randn(compiled.dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got, want = compiled.matvec(v), eager.matvec(v)
    assert float((got - want).norm()) <= 1e-12 * float(want.norm())
    record = compiled.precision_record()
    assert record["compiled"] is True and record["deviation"] <= 1e-12
    described = compiled.describe()
    assert described["hvp_mode"] == "fwd-rev" and described["mode_selection"]["compile"]["chosen"] == "fwd-rev"
    assert described["cache_graphs"] is False


@pytest.mark.slow
def test_compiled_block_products_and_block_lanczos_equal_eager() -> None:
    compiled, eager = compiled_pair()
    V = torch.randn(compiled.dim, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    got, want = compiled.matmat(V), eager.matmat(V)
    assert float((got - want).norm()) <= 1e-12 * float(want.norm())
    a = lanczos(compiled, k=3, block=3, tol=1e-10, max_iter=compiled.dim, seed=0)
    b = lanczos(eager, k=3, block=3, tol=1e-10, max_iter=eager.dim, seed=0)
    assert torch.allclose(a.eigenvalues, b.eigenvalues, rtol=1e-11, atol=0)


@pytest.mark.parametrize("operator", ["ggn", "ef"])
def test_output_space_operators_report_their_bf16_deviation(operator: str) -> None:
    """GGN and empirical Fisher take the same precision option: the deviation they record is that of
    the products they then use, against a strict operator of the same kind (itself checked against
    dense matrices in the GGN tests)."""
    from sharpscope import EmpiricalFisherOperator, GGNOperator

    model, x, y = float32_problem()
    objective = Objective(model, nn.CrossEntropyLoss(), (x, y))
    kind = GGNOperator if operator == "ggn" else EmpiricalFisherOperator
    strict, fast = kind(objective), kind(objective, precision="bf16")
    v = check_vector(objective.dim).float()
    exact, approx = strict.matvec(v).double(), fast.matvec(v).double()
    record = fast.precision_record()
    assert record["precision"] == "bf16" and record["hvps"] == 2 and fast.describe()["product_precision"] == record
    assert 1e-4 < record["deviation"] < 0.1
    assert record["deviation"] == pytest.approx(float((approx - exact).norm() / exact.norm()), rel=1e-6)
    assert strict.precision_record()["deviation"] is None
    with pytest.raises(ConfigError, match="float64"):
        kind(Objective(tiny_mlp(), nn.CrossEntropyLoss(), mlp_data()), precision="bf16")
