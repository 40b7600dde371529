"""Every model works under torch.func: forward-over-reverse HVPs equal double-backward ones."""

import pytest
import torch
from torch.func import functional_call, grad, jvp

from sharpscope.models import build_model

CASES = [
    ("mlp", {"in_features": 3 * 8 * 8, "num_classes": 3, "widths": [6, 5]}, (3, 8, 8)),
    ("mlp", {"in_features": 3 * 8 * 8, "num_classes": 3, "widths": [6], "activation": "softplus"}, (3, 8, 8)),
    ("cnn", {"in_channels": 3, "num_classes": 3, "channels": [4, 4], "image_size": 8, "norm": "ln"}, (3, 8, 8)),
    ("cnn", {"in_channels": 3, "num_classes": 3, "channels": [4], "image_size": 8, "norm": "bn",
             "activation": "tanh", "pool": "avg"}, (3, 8, 8)),
    ("resnet18", {"width": 4, "norm": "gn", "num_classes": 3}, (3, 8, 8)),
    ("resnet18", {"width": 4, "norm": "bn", "num_classes": 3}, (3, 8, 8)),
    ("vgg11", {"width": 2, "norm": "bn", "num_classes": 3, "classifier_widths": [8]}, (3, 32, 32)),
    ("wrn", {"depth": 10, "widen": 1, "norm": None, "num_classes": 3, "residual_gain": 0.5}, (3, 8, 8)),
    ("wrn", {"depth": 10, "widen": 1, "norm": "bn", "num_classes": 3}, (3, 8, 8)),
]


@pytest.mark.parametrize("name,kwargs,shape", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_jvp_of_grad_matches_double_backward(name, kwargs, shape) -> None:
    torch.manual_seed(0)
    model = build_model(name, **kwargs).double().eval()
    x = torch.randn(2, *shape, dtype=torch.float64)
    y = torch.tensor([0, 2])
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = dict(model.named_buffers())

    def loss(p):
        out = functional_call(model, (p, buffers), (x,))
        return torch.nn.functional.cross_entropy(out, y)

    v = {k: torch.randn_like(t) for k, t in params.items()}
    _, hvp = jvp(grad(loss), (params,), (v,))

    leaves = [p.clone().requires_grad_(True) for p in params.values()]
    p2 = dict(zip(params, leaves))
    g = torch.autograd.grad(loss(p2), leaves, create_graph=True)
    dot = sum((gi * v[k]).sum() for gi, k in zip(g, params))
    ref = torch.autograd.grad(dot, leaves)
    for k, r in zip(params, ref):
        assert torch.allclose(hvp[k], r, rtol=1e-8, atol=1e-10), k
    assert any(float(h.abs().max()) > 0 for h in hvp.values())
