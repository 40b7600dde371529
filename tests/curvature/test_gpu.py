"""The engine on CUDA in float32 against dense float64 Hessians (run with ``-m gpu``)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sharpscope import HessianOperator, Objective, exact_hessian, hutchpp, lanczos

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Tanh(), nn.AvgPool2d(2),
                         nn.Conv2d(4, 4, 3, padding=1), nn.Tanh(), nn.AvgPool2d(2), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 10))


@pytest.fixture(scope="module", params=["eval", "batch"])
def problem(request: pytest.FixtureRequest) -> tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]:
    """BN mode, data, and the dense float64 Hessian (about 900 parameters, row by row with autograd)."""
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 3, 16, 16, generator=gen), torch.randint(0, 10, (64,), generator=gen)
    exact = exact_hessian(Objective(small_cnn().double().cuda(), nn.CrossEntropyLoss(), (x.double(), y),
                                    bn=request.param, batch_size=32)).cpu()
    return request.param, x, y, exact


@pytest.mark.parametrize("mode", ["fwd-rev", "rev-rev"])
def test_float32_cuda_products_match_float64_dense(problem: tuple, mode: str) -> None:
    bn, x, y, exact = problem
    gen = torch.Generator().manual_seed(1)
    op = HessianOperator(Objective(small_cnn().cuda(), nn.CrossEntropyLoss(), (x, y), bn=bn, batch_size=32),
                         mode=mode)
    V = torch.randn(op.dim, 8, generator=gen, dtype=torch.float64)
    got = op.matmat(V.float().cuda()).double().cpu()
    assert torch.linalg.norm(got - exact @ V) <= 1e-4 * torch.linalg.norm(exact @ V)
    top = lanczos(op, k=3, tol=1e-4, seed=0)
    torch.testing.assert_close(top.eigenvalues, torch.linalg.eigvalsh(exact).flip(0)[:3], rtol=1e-4, atol=1e-5)
    trace = hutchpp(op, 60, seed=0)
    assert abs(trace.estimate - float(torch.trace(exact))) < 4 * trace.stderr


def test_tf32_is_off_during_products_and_restored_after() -> None:
    before = (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision)
    seen = []

    class Spy(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append((torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision))
            return x

    model = nn.Sequential(small_cnn(), Spy()).cuda()
    x, y = torch.randn(8, 3, 16, 16, device="cuda"), torch.randint(0, 10, (8,), device="cuda")
    op = HessianOperator(Objective(model, nn.CrossEntropyLoss(), (x, y)), mode="rev-rev")
    seen.clear()
    op.matvec(torch.randn(op.dim, device="cuda"))
    assert seen and all(s == ("ieee", "ieee") for s in seen)
    assert (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision) == before
    assert op.describe()["product_precision"]["precision"] == "strict"
