"""Preconditioned sharpness: ``P^{-1/2} H P^{-1/2}`` against generalized eigenvalues, and Adam's ``P``."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from sharpscope import (
    ConfigError,
    HessianOperator,
    MatrixOperator,
    Objective,
    PreconditionedOperator,
    adam_preconditioner,
    exact_hessian,
    lanczos,
)
from sharpscope.losses import mse
from sharpscope.optim import SAM


def _dense_problem(dim: int = 40, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """An indefinite symmetric H and a positive diagonal P spread over four decades."""
    gen = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=torch.float64))
    eig = torch.linspace(-3.0, 10.0, dim, dtype=torch.float64)
    H = Q @ torch.diag(eig) @ Q.T
    H = 0.5 * (H + H.T)
    p = 10.0 ** (4.0 * torch.rand(dim, generator=gen, dtype=torch.float64) - 2.0)
    return H, p


def _dense(op: PreconditionedOperator) -> torch.Tensor:
    return op.matmat(torch.eye(op.dim, dtype=op.dtype))


def test_spectrum_equals_generalized_eigenvalues() -> None:
    H, p = _dense_problem()
    op = PreconditionedOperator(MatrixOperator(H), p)
    A = _dense(op)
    assert torch.allclose(A, A.T, rtol=0, atol=1e-12 * A.abs().max())  # symmetric, so Lanczos applies
    general = scipy.linalg.eigh(H.numpy(), np.diag(p.numpy()), eigvals_only=True)
    ours = torch.linalg.eigvalsh(A).numpy()
    scale = np.abs(general).max()
    np.testing.assert_allclose(ours, general, rtol=0, atol=1e-10 * scale)
    # and λ(P⁻¹H) (non-symmetric) has the same spectrum
    nonsym = np.sort(np.linalg.eigvals(np.diag(1 / p.numpy()) @ H.numpy()).real)
    np.testing.assert_allclose(ours, nonsym, rtol=0, atol=1e-9 * scale)


def test_lanczos_top_eigenpair_solves_the_pencil() -> None:
    H, p = _dense_problem(dim=200, seed=1)
    inner = MatrixOperator(H)
    op = PreconditionedOperator(inner, p)
    res = lanczos(op, k=2, tol=1e-10, seed=0, stop="residual")
    assert res.converged
    general = scipy.linalg.eigh(H.numpy(), np.diag(p.numpy()), eigvals_only=True)[::-1]
    np.testing.assert_allclose(res.eigenvalues.numpy(), general[:2], rtol=1e-10)
    u = op.to_original(res.eigenvectors[:, 0])  # H u = λ P u
    lam = float(res.eigenvalues[0])
    assert torch.linalg.norm(H @ u - lam * p * u) <= 1e-8 * lam * torch.linalg.norm(p * u)
    assert inner.matvecs == op.matvecs == res.hvps  # one inner product per preconditioned product


def test_identity_preconditioner_is_the_operator_itself() -> None:
    H, _ = _dense_problem(dim=12, seed=2)
    op = PreconditionedOperator(MatrixOperator(H), torch.ones(12, dtype=torch.float64))
    torch.testing.assert_close(_dense(op), H, rtol=0, atol=1e-14)
    scaled = PreconditionedOperator(MatrixOperator(H), torch.full((12,), 4.0, dtype=torch.float64))
    torch.testing.assert_close(_dense(scaled), H / 4, rtol=0, atol=1e-14)
    info = scaled.describe()
    assert info["operator"] == "PreconditionedOperator" and info["inner_operator"] == "MatrixOperator"
    assert info["preconditioner"]["min"] == info["preconditioner"]["max"] == 4.0


@pytest.mark.parametrize("bad, match", [
    (torch.ones(5, dtype=torch.float64), "shape"),
    (torch.ones(6, 1, dtype=torch.float64), "shape"),
    (torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0, 1.0], dtype=torch.float64), "positive"),
    (torch.tensor([1.0, -1.0, 1.0, 1.0, 1.0, 1.0], dtype=torch.float64), "positive"),
    (torch.tensor([1.0, float("nan"), 1.0, 1.0, 1.0, 1.0], dtype=torch.float64), "non-finite"),
])
def test_bad_preconditioner_is_refused(bad: torch.Tensor, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        PreconditionedOperator(MatrixOperator(torch.eye(6, dtype=torch.float64)), bad)


# ------------------------------------------------------------------------------ Adam's P
def _model_and_data() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()
    gen = torch.Generator().manual_seed(1)
    return model, torch.randn(30, 5, generator=gen, dtype=torch.float64), torch.randint(0, 3, (30,), generator=gen)


def _run_adam(opt: torch.optim.Optimizer, objective: Objective, steps: int) -> list[torch.Tensor]:
    """Take full-batch steps; return the flat gradient (objective order) seen at each step."""
    grads = []
    for _ in range(steps):
        opt.zero_grad()
        loss = mse(objective.model(objective.batches[0].x), objective.batches[0].y)
        loss.backward()
        grads.append(objective.flatten(p.grad for p in objective.params.values()).clone())
        opt.step()
    return grads


@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("cls", [torch.optim.Adam, torch.optim.AdamW])
def test_adam_preconditioner_matches_hand_computation(cls: type, amsgrad: bool) -> None:
    model, x, y = _model_and_data()
    objective = Objective(model, mse, (x, y))
    names = objective.names
    # groups in an order different from the objective's, with different betas and eps
    first = [objective.params[n] for n in names if n.startswith("2.")]
    second = [objective.params[n] for n in reversed(names) if n.startswith("0.")]
    opt = cls([{"params": first, "betas": (0.8, 0.95), "eps": 1e-3},
               {"params": second, "betas": (0.9, 0.999), "eps": 1e-8}], lr=0.05, amsgrad=amsgrad)
    steps = 4
    grads = _run_adam(opt, objective, steps)

    beta2 = torch.cat([torch.full((objective.params[n].numel(),), 0.95 if n.startswith("2.") else 0.999,
                                  dtype=torch.float64) for n in names])
    eps = torch.cat([torch.full((objective.params[n].numel(),), 1e-3 if n.startswith("2.") else 1e-8,
                                dtype=torch.float64) for n in names])
    v = torch.zeros(objective.dim, dtype=torch.float64)
    v_max = torch.zeros_like(v)
    for g in grads:
        v = beta2 * v + (1 - beta2) * g * g
        v_max = torch.maximum(v_max, v)
    second_moment = v_max if amsgrad else v
    expected = torch.sqrt(second_moment / (1 - beta2 ** steps)) + eps
    expected_raw = torch.sqrt(second_moment) + eps

    got = adam_preconditioner(opt, objective)
    assert got.dtype == torch.float64 and got.shape == (objective.dim,)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(adam_preconditioner(opt, objective, bias_correction=False), expected_raw,
                               rtol=1e-12, atol=0)
    # the mapping and the parameter list give the same vector
    torch.testing.assert_close(adam_preconditioner(opt, objective.params), expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(adam_preconditioner(opt, list(objective.params.values())), expected,
                               rtol=1e-12, atol=0)


def test_adam_preconditioner_is_the_denominator_of_the_latest_step() -> None:
    """Adam's step t is exactly -(η/(1 - β1^t)) m_t / P with P read from the state after it."""
    model, x, y = _model_and_data()
    objective = Objective(model, mse, (x, y))
    opt = torch.optim.Adam(model.parameters(), lr=0.01, betas=(0.9, 0.99), eps=1e-6)
    _run_adam(opt, objective, 3)
    before = objective.parameter_vector()
    _run_adam(opt, objective, 1)
    P = adam_preconditioner(opt, objective)  # state after step 4 = the denominator used by step 4
    m = objective.flatten(opt.state[p]["exp_avg"] for p in objective.params.values())
    expected_step = -(0.01 / (1 - 0.9 ** 4)) * m / P
    torch.testing.assert_close(objective.parameter_vector() - before, expected_step, rtol=1e-10, atol=1e-15)


def test_preconditioned_hessian_of_a_real_network() -> None:
    model, x, y = _model_and_data()
    objective = Objective(model, mse, (x, y))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    _run_adam(opt, objective, 5)
    P = adam_preconditioner(opt, objective)
    H = exact_hessian(objective)
    general = scipy.linalg.eigh(H.numpy(), np.diag(P.numpy()), eigvals_only=True)
    res = lanczos(PreconditionedOperator(HessianOperator(objective), P), k=1, tol=1e-10, seed=0)
    np.testing.assert_allclose(float(res.eigenvalues[0]), general[-1], rtol=1e-9)
    assert general[-1] > 10 * np.linalg.eigvalsh(H.numpy())[-1]  # preconditioning matters here


def test_adam_inside_sam_is_unwrapped() -> None:
    model, x, y = _model_and_data()
    objective = Objective(model, mse, (x, y))
    opt = SAM(model.parameters(), torch.optim.Adam, rho=0.05, lr=0.01)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = mse(model(x), y)
        loss.backward()
        return loss

    opt.step(closure)
    direct = adam_preconditioner(opt.base_optimizer, objective)
    torch.testing.assert_close(adam_preconditioner(opt, objective), direct, rtol=0, atol=0)


def test_clear_errors() -> None:
    model, x, y = _model_and_data()
    objective = Objective(model, mse, (x, y))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    with pytest.raises(ConfigError, match="no state yet"):
        adam_preconditioner(opt, objective)
    with pytest.raises(ConfigError, match="Adam or AdamW"):
        adam_preconditioner(torch.optim.SGD(model.parameters(), lr=0.1), objective)
    partial = torch.optim.Adam(model[0].parameters(), lr=0.01)
    _run_adam(partial, objective, 1)
    with pytest.raises(ConfigError, match=r"not optimized by this Adam: \['2.weight', '2.bias'\]"):
        adam_preconditioner(partial, objective)
    # a parameter in the optimizer but without a gradient at the step has no state
    frozen_grad = torch.optim.Adam(model.parameters(), lr=0.01)
    frozen_grad.zero_grad()
    mse(model(x), y).backward()
    model[2].bias.grad = None
    frozen_grad.step()
    with pytest.raises(ConfigError, match=r"no state yet for 1 parameter\(s\) \(\['2.bias'\]\)"):
        adam_preconditioner(frozen_grad, objective)
    with pytest.raises(ConfigError, match="bias_correction"):
        adam_preconditioner(partial, objective, bias_correction=1)
