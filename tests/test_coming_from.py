"""docs/coming-from.md, mapping by mapping: each tool's call and sharpscope's on the same tiny float64
model give the same numbers (eigenvalues to 1e-6 relative), and the defaults the page says differ do.

Each test runs where its tool is installed (pyhessian and hessian-eigenthings come with the ``dev``
extra; curvlinops installs as ``benchmarks/README.md`` says) and is skipped otherwise.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse.linalg
import torch
from torch import nn

from sharpscope import HessianOperator, Objective, exact_hessian, lanczos

RTOL = 1e-6


def tiny_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()


def data(n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(n, 4, generator=gen, dtype=torch.float64), torch.randint(0, 3, (n,), generator=gen)


class Quadratic(nn.Module):
    """``model(x) = x θ``; with ``signed_square`` as the loss, ``L(θ) = ½ mean_i y_i (x_i·θ)²`` and
    ``H = (1/N) Σ_i y_i x_i x_iᵀ``: rows ``x_i = e_i`` and weights ``y`` make the spectrum ``y`` itself."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.linspace(0.5, 1.5, dim, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.theta


def signed_square(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 0.5 * (y * out**2).mean()


def close(a: float, b: float, rtol: float = RTOL) -> bool:
    return abs(a - b) <= rtol * abs(b)


# ----------------------------------------------------------------------------- hessian-eigenthings
def test_hessian_eigenthings_lanczos_and_eigenvectors_per_parameter() -> None:
    he = pytest.importorskip("hessian_eigenthings")
    model, (x, y), criterion = tiny_mlp(), data(), nn.CrossEntropyLoss()
    loader = [(x[:16], y[:16]), (x[16:], y[16:])]  # equal batches: its equal weights are sharpscope's
    op = he.HessianOperator(model, loader, he.supervised_loss(criterion))
    theirs = he.lanczos(op, k=3, max_iter=op.size, which="LM", seed=0)  # every step: exact to round-off

    objective = Objective(model, criterion, loader)
    ours = lanczos(HessianOperator(objective), k=3, which="LM", tol=1e-10, seed=0)
    assert ours.converged and bool(theirs.converged.all())
    for a, b in zip(theirs.eigenvalues.tolist(), ours.eigenvalues.tolist()):
        assert close(a, b)

    # per-parameter eigenvectors: its vector_to_params against objective.unflatten, up to sign
    mine = objective.unflatten(ours.eigenvectors[:, 0])
    other = he.vector_to_params(theirs.eigenvectors[0], he.select_parameters(model))
    assert list(mine) == list(other)
    sign = float(torch.sign(ours.eigenvectors[:, 0] @ theirs.eigenvectors[0]))
    for name in mine:
        torch.testing.assert_close(mine[name], sign * other[name], rtol=0, atol=1e-6)


def test_hessian_eigenthings_default_runs_2k_steps_without_converging() -> None:
    he = pytest.importorskip("hessian_eigenthings")
    model, (x, y), criterion = tiny_mlp(), data(), nn.CrossEntropyLoss()
    op = he.HessianOperator(model, [(x, y)], he.supervised_loss(criterion))
    default = he.lanczos(op, k=3, seed=0)
    assert default.iterations == 2 * 3  # max_iter = min(2k, n - 1): a fixed number of steps
    top = float(torch.linalg.eigvalsh(exact_hessian(Objective(model, criterion, (x, y))))[-1])
    assert not bool(default.converged[0]) and not close(float(default.eigenvalues[0]), top, 1e-3)


def test_hessian_eigenthings_weights_batches_equally() -> None:
    he = pytest.importorskip("hessian_eigenthings")
    model, (x, y), criterion = tiny_mlp(), data(), nn.CrossEntropyLoss()
    loader = [(x[:24], y[:24]), (x[24:], y[24:])]  # 24 and 8 examples
    op = he.HessianOperator(model, loader, he.supervised_loss(criterion))
    theirs = float(he.lanczos(op, k=1, max_iter=op.size, which="LA", seed=0).eigenvalues[0])
    by_count = float(lanczos(HessianOperator(Objective(model, criterion, loader)), k=1, tol=1e-10, seed=0).eigenvalues[0])
    assert not close(theirs, by_count, 1e-3)  # a short batch counts as much as a full one there
    dense = [exact_hessian(Objective(model, criterion, [b])) for b in loader]
    assert close(theirs, float(torch.linalg.eigvalsh((dense[0] + dense[1]) / 2)[-1]))


# ----------------------------------------------------------------------------- PyHessian
@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True:UserWarning")
@pytest.mark.parametrize("case", ["mlp", "indefinite"])
def test_pyhessian_power_iteration_returns_the_largest_magnitude_eigenvalue(case: str) -> None:
    pyhessian = pytest.importorskip("pyhessian")
    if case == "mlp":
        model, (x, y), criterion = tiny_mlp(), data(), nn.CrossEntropyLoss()
    else:  # spectrum {-3, -1, 0.5, 1, 2}: the largest magnitude is the most negative
        model, x = Quadratic(5), torch.eye(5, dtype=torch.float64)
        y, criterion = torch.tensor([-3.0, -1.0, 0.5, 1.0, 2.0], dtype=torch.float64) * 5, signed_square
    torch.manual_seed(0)  # PyHessian draws its start vector from the global generator
    hc = pyhessian.hessian(model, criterion, data=(x, y), cuda=False)
    (theirs,), _ = hc.eigenvalues(maxIter=5000, tol=1e-12, top_n=1)
    for p in model.parameters():
        p.grad = None  # PyHessian leaves a gradient with a graph attached

    H = HessianOperator(Objective(model, criterion, (x, y)))
    lm, la, sa = (float(lanczos(H, k=1, which=w, tol=1e-10, seed=0).eigenvalues[0]) for w in ("LM", "LA", "SA"))
    # PyHessian divides by ‖v‖ + 1e-6 when it normalises, and normalises its unit vector once more
    # (orthnormal) before each product: ‖v‖² = (1 + 1e-6)⁻², its eigenvalues are low by 2e-6 relative
    assert close(theirs * (1 + 1e-6) ** 2, lm)
    if case == "indefinite":
        assert close(lm, -3.0) and close(lm, sa) and close(la, 2.0) and theirs < 0


# ----------------------------------------------------------------------------- curvlinops
def test_curvlinops_hessian_products_and_eigsh() -> None:
    curvlinops = pytest.importorskip("curvlinops")
    model, (x, y), criterion = tiny_mlp(), data(), nn.CrossEntropyLoss()
    loader = [(x[:16], y[:16]), (x[16:], y[16:])]
    theirs = curvlinops.HessianLinearOperator(model, criterion, list(model.parameters()), loader)
    objective = Objective(model, criterion, loader)
    ours = HessianOperator(objective)
    V = torch.randn(objective.dim, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(ours.matmat(V), theirs @ V, rtol=1e-10, atol=1e-12)
    top = [np.sort(scipy.sparse.linalg.eigsh(A.to_scipy(), k=2, which="LA", tol=1e-12)[0]) for A in (theirs, ours)]
    np.testing.assert_allclose(top[0], top[1], rtol=RTOL)
