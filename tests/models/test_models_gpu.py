"""torch.func on CUDA for the larger models (run with ``-m gpu``)."""

import pytest
import torch
from torch.func import functional_call, grad, jvp

from sharpscope.models import build_model

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.fixture(autouse=True)
def _no_tf32():
    """Curvature work runs without TF32 (docs/conventions.md); with it the HVP is only ~1% accurate."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@pytest.mark.parametrize("name,kwargs", [("resnet18", {"norm": "gn"}), ("resnet18", {"norm": "bn"}),
                                         ("vgg11", {}), ("wrn", {"norm": None}), ("wrn", {"norm": "gn"})])
def test_full_size_hvp_on_gpu(name: str, kwargs: dict) -> None:
    torch.manual_seed(0)
    model = build_model(name, **kwargs).cuda().eval()
    x, y = torch.randn(16, 3, 32, 32, device="cuda"), torch.randint(0, 10, (16,), device="cuda")
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = dict(model.named_buffers())

    def loss(p):
        return torch.nn.functional.cross_entropy(functional_call(model, (p, buffers), (x,)), y)

    v = {k: torch.randn_like(t) for k, t in params.items()}
    _, hvp = jvp(grad(loss), (params,), (v,))
    vhv = sum((hvp[k] * v[k]).sum() for k in params)
    assert torch.isfinite(vhv)
    # symmetry check of the operator: u.Hv == v.Hu
    u = {k: torch.randn_like(t) for k, t in params.items()}
    _, hu = jvp(grad(loss), (params,), (u,))
    uhv = sum((hvp[k] * u[k]).sum() for k in params)
    vhu = sum((hu[k] * v[k]).sum() for k in params)
    assert torch.allclose(uhv, vhu, rtol=1e-2, atol=1e-3 * float(vhv.abs()) + 1e-4)
