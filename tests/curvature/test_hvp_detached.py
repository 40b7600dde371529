"""Products with a parameter subset are plain tensors: no autograd record through the other parameters."""

import pytest
import torch

from sharpscope.curvature import HessianOperator, Objective, exact_hessian


@pytest.mark.parametrize("mode", ["fwd-rev", "rev-rev", "fd"])
def test_subset_products_carry_no_graph(mode: str) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)).double()
    x, y = torch.randn(20, 4, dtype=torch.float64), torch.randint(0, 3, (20,))
    objective = Objective(model, torch.nn.functional.cross_entropy, (x, y), params="0.*")
    op = HessianOperator(objective, mode=mode)
    V = torch.randn(op.dim, 3, dtype=torch.float64)
    out = op.matmat(V)
    assert not out.requires_grad and out.grad_fn is None
    dense = exact_hessian(objective)
    torch.testing.assert_close(out, dense @ V, rtol=1e-6 if mode == "fd" else 1e-10, atol=1e-8)
