"""GGN and empirical Fisher operators against dense float64 matrices built here from Jacobians."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse.linalg
import torch
from torch import Tensor, nn

from sharpscope import (
    EmpiricalFisherOperator,
    GGNOperator,
    HessianOperator,
    MatrixOperator,
    Objective,
    exact_hessian,
    hutchpp,
    lanczos,
    slq_density,
)
from sharpscope.errors import ConfigError, ObjectiveError
from tests.curvature.conftest import cnn_data, mlp_data, tiny_bn_cnn, tiny_mlp


def mse_targets(y: Tensor) -> Tensor:
    return nn.functional.one_hot(y, 3).double()


def objectives() -> dict[str, Objective]:
    x, y = mlp_data(30)
    cx, cy = cnn_data(16)
    return {
        "mlp-ce": Objective(tiny_mlp(), nn.CrossEntropyLoss(), (x, y), batch_size=12),
        "mlp-mse": Objective(tiny_mlp(), nn.MSELoss(), (x, mse_targets(y)), batch_size=12),
        "cnn-bn-eval-ce": Objective(tiny_bn_cnn(), nn.CrossEntropyLoss(), (cx, cy), bn="eval", batch_size=10),
        "cnn-bn-batch-ce": Objective(tiny_bn_cnn(), nn.CrossEntropyLoss(), (cx, cy), bn="batch", batch_size=10),
    }


def jacobian(objective: Objective, batch) -> Tensor:  # noqa: ANN001
    """``(n_b, C, dim)`` Jacobian of the outputs by torch.autograd.functional.jacobian."""
    theta = objective.parameter_vector()
    with objective.mode():
        def f(flat: Tensor) -> Tensor:
            return torch.func.functional_call(objective.model, objective.unflatten(flat), (batch.x,), strict=False)
        return torch.autograd.functional.jacobian(f, theta)


def output_hessian(loss: nn.Module, out: Tensor) -> Tensor:
    """Explicit ``∇²_f ℓ_b`` of the batch's mean loss, ``(n C, n C)``: softmax or squared error formulas."""
    n, c = out.shape
    if isinstance(loss, nn.CrossEntropyLoss):
        p = torch.softmax(out, dim=1)
        blocks = [torch.diag(p[i]) - torch.outer(p[i], p[i]) for i in range(n)]
        return torch.block_diag(*blocks) / n
    return 2.0 * torch.eye(n * c, dtype=out.dtype) / (n * c)  # nn.MSELoss(): mean over n·C entries


def dense_ggn(objective: Objective) -> Tensor:
    total = torch.zeros(objective.dim, objective.dim, dtype=torch.float64)
    for batch, w in zip(objective.batches, objective.weights()):
        J = jacobian(objective, batch)
        with objective.mode(), torch.no_grad():
            out = torch.func.functional_call(objective.model, dict(objective.params), (batch.x,), strict=False)
        Jf = J.reshape(-1, objective.dim)
        total += w * Jf.T @ output_hessian(objective.loss_fn, out) @ Jf
    return total


def dense_ef(objective: Objective) -> Tensor:
    """``(1/N) Σ_i g_i g_iᵀ`` from per-example gradients of each example's own loss (autograd, one by one)."""
    theta = objective.parameter_vector()
    grads = []
    with objective.mode():
        for batch in objective.batches:
            for i in range(batch.size):
                flat = theta.clone().requires_grad_(True)
                out = torch.func.functional_call(objective.model, objective.unflatten(flat), (batch.x,), strict=False)
                (g,) = torch.autograd.grad(objective.loss_fn(out[i:i + 1], batch.y[i:i + 1]), flat)
                grads.append(g)
    G = torch.stack(grads)
    return G.T @ G / G.shape[0]


DENSE = {"ggn": (GGNOperator, dense_ggn), "ef": (EmpiricalFisherOperator, dense_ef)}


@pytest.mark.parametrize("name", list(objectives()))
@pytest.mark.parametrize("kind", list(DENSE))
def test_products_equal_dense_matrix(name: str, kind: str) -> None:
    objective = objectives()[name]
    cls, dense = DENSE[kind]
    A = dense(objective)
    op = cls(objective, block_size=3)
    V = torch.randn(objective.dim, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert torch.linalg.norm(op.matmat(V) - A @ V) <= 1e-10 * torch.linalg.norm(A @ V)
    assert torch.linalg.norm(op.matvec(V[:, 0]) - A @ V[:, 0]) <= 1e-10 * torch.linalg.norm(A @ V[:, 0])
    assert op.matvecs == 6
    assert torch.linalg.eigvalsh(A)[0] >= -1e-12 * torch.linalg.eigvalsh(A)[-1]  # both are PSD
    assert op.describe()["operator"] == kind and op.describe()["bn"] == objective.bn


def test_ggn_equals_hessian_for_linear_least_squares() -> None:
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(20, 4, generator=gen, dtype=torch.float64)
    t = torch.randn(20, 2, generator=gen, dtype=torch.float64)
    model = nn.Linear(4, 2).double()
    objective = Objective(model, nn.MSELoss(), (x, t), batch_size=7)
    V = torch.randn(objective.dim, 3, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(GGNOperator(objective).matmat(V), exact_hessian(objective) @ V, rtol=1e-12, atol=1e-14)


def test_ggn_differs_from_hessian_for_a_nonlinear_network() -> None:
    objective = objectives()["mlp-ce"]
    G, H = dense_ggn(objective), exact_hessian(objective)
    assert torch.linalg.norm(G - H) > 1e-3 * torch.linalg.norm(H)  # the test above is not vacuous


@pytest.mark.parametrize("kind", list(DENSE))
def test_algorithms_run_on_the_operators(kind: str) -> None:
    objective = objectives()["mlp-ce"]
    cls, dense = DENSE[kind]
    exact = torch.linalg.eigvalsh(dense(objective))
    op = cls(objective)
    top = lanczos(op, k=3, tol=1e-10, seed=0)
    torch.testing.assert_close(top.eigenvalues, exact.flip(0)[:3], rtol=1e-8, atol=1e-12)
    # the stochastic estimators see the same probes on the operator and on the dense matrix
    A = MatrixOperator(dense(objective))
    torch.testing.assert_close(hutchpp(op, num_matvecs=30, seed=0).estimate,
                               hutchpp(A, num_matvecs=30, seed=0).estimate, rtol=1e-10, atol=0)
    ours = slq_density(op, num_steps=20, num_runs=2, seed=0)
    reference = slq_density(A, num_steps=20, num_runs=2, seed=0)
    torch.testing.assert_close(ours.trace, reference.trace, rtol=1e-10, atol=0)
    torch.testing.assert_close(ours.nodes, reference.nodes, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("kind", ["hessian", "ggn", "ef"])
def test_to_scipy_eigsh_matches_dense(kind: str) -> None:
    objective = objectives()["mlp-mse"]
    op = HessianOperator(objective, mode="rev-rev") if kind == "hessian" else DENSE[kind][0](objective)
    A = (exact_hessian if kind == "hessian" else DENSE[kind][1])(objective).numpy()
    S = op.to_scipy()
    assert S.shape == (objective.dim, objective.dim) and S.dtype == np.float64
    x = np.random.default_rng(0).standard_normal(objective.dim)
    np.testing.assert_allclose(S @ x, A @ x, rtol=1e-10, atol=1e-12)
    vals = scipy.sparse.linalg.eigsh(S, k=3, which="LA", tol=1e-12, return_eigenvectors=False)
    np.testing.assert_allclose(np.sort(vals), np.linalg.eigvalsh(A)[-3:], rtol=1e-9)


def test_to_scipy_converts_float32_operators() -> None:
    A = torch.diag(torch.arange(1.0, 6.0))
    S = MatrixOperator(A).to_scipy()
    out = S.matmat(np.eye(5))
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, np.diag(np.arange(1.0, 6.0)))


def test_a_sum_reduced_loss_is_refused_or_rescaled_before_the_fisher() -> None:
    """The objective refuses a sum-reduced loss at construction; declared with ``reduction="sum"`` it is
    rescaled to the mean, and the empirical Fisher then equals the mean loss's."""
    x, y = mlp_data(8)
    model = tiny_mlp()
    with pytest.raises(ObjectiveError, match="sum over the batch"):
        Objective(model, nn.CrossEntropyLoss(reduction="sum"), (x, y))
    summed = EmpiricalFisherOperator(Objective(model, nn.CrossEntropyLoss(reduction="sum"), (x, y), reduction="sum"))
    mean = EmpiricalFisherOperator(Objective(model, nn.CrossEntropyLoss(), (x, y)))
    v = torch.randn(summed.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(summed.matvec(v), mean.matvec(v), rtol=1e-12, atol=1e-14)


def test_bad_block_size_raises_before_work() -> None:
    with pytest.raises(ConfigError, match="block_size"):
        GGNOperator(objectives()["mlp-ce"], block_size=0)


@pytest.mark.parametrize("name", ["mlp-ce", "mlp-mse"])
def test_against_curvlinops(name: str) -> None:
    curvlinops = pytest.importorskip("curvlinops")
    objective = objectives()[name]
    model, params = objective.model, list(objective.params.values())
    data = [(b.x, b.y) for b in objective.batches]
    V = torch.randn(objective.dim, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    theirs = curvlinops.GGNLinearOperator(model, objective.loss_fn, params, data, check_deterministic=False)
    torch.testing.assert_close(GGNOperator(objective).matmat(V), theirs @ V, rtol=1e-10, atol=1e-13)
    theirs = curvlinops.EFLinearOperator(model, objective.loss_fn, params, data, check_deterministic=False)
    # curvlinops' per-example loss for nn.MSELoss sums over the C outputs, ours is loss_fn on one
    # example (a mean over them): its empirical Fisher is C times ours; for cross entropy they agree
    scale = objective.batches[0].y.shape[1] if isinstance(objective.loss_fn, nn.MSELoss) else 1
    torch.testing.assert_close(scale * EmpiricalFisherOperator(objective).matmat(V), theirs @ V, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("kind", list(DENSE))
def test_a_parameter_subset_gives_the_matching_block(kind: str) -> None:
    x, y = mlp_data(30)
    full = Objective(tiny_mlp(), nn.CrossEntropyLoss(), (x, y), batch_size=12)
    part = Objective(tiny_mlp(), nn.CrossEntropyLoss(), (x, y), batch_size=12, params="2.*")
    cls, dense = DENSE[kind]
    A = dense(full)
    tail = A[-part.dim:, -part.dim:]  # "2.weight", "2.bias" are the last parameters
    V = torch.randn(part.dim, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(cls(part).matmat(V), tail @ V, rtol=1e-10, atol=1e-13)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", list(DENSE))
@pytest.mark.parametrize("bn", ["eval", "batch"])
def test_float32_cuda_products_match_float64_cpu(kind: str, bn: str) -> None:
    cx, cy = cnn_data(16)
    cls = DENSE[kind][0]
    reference = cls(Objective(tiny_bn_cnn(), nn.CrossEntropyLoss(), (cx, cy), bn=bn, batch_size=10))
    model = tiny_bn_cnn().float().cuda()
    op = cls(Objective(model, nn.CrossEntropyLoss(), (cx.float(), cy), bn=bn, batch_size=10))
    V = torch.randn(op.dim, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    want = reference.matmat(V)
    got = op.matmat(V.float().cuda()).double().cpu()
    assert torch.linalg.norm(got - want) <= 1e-4 * torch.linalg.norm(want)


class _DictModel(nn.Module):
    """Returns ``{"logits": ...}`` like a Hugging Face model and takes its batch as keywords."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, inputs: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        return {"logits": self.inner(inputs)}


def test_output_operators_take_dict_batches_and_dict_outputs() -> None:
    """A dict batch and a model returning ``{"logits"}`` give the same GGN and Fisher as the (x, y) pair."""
    x, y = mlp_data(12)
    inner = tiny_mlp()
    pair = Objective(inner, nn.CrossEntropyLoss(), (x, y))
    ce = nn.CrossEntropyLoss()
    mapping = Objective(_DictModel(inner), lambda out, batch: ce(out, batch["labels"]), {"inputs": x, "labels": y})
    v = torch.randn(pair.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for cls in (GGNOperator, EmpiricalFisherOperator):
        if cls is EmpiricalFisherOperator:
            with pytest.raises(ConfigError, match="pair batches"):
                cls(mapping).matvec(v)
            continue
        assert torch.allclose(cls(mapping).matvec(v), cls(pair).matvec(v), rtol=1e-12, atol=1e-14)
