"""Sharpness measures on quadratics ``L(w) = ½ wᵀAw + bᵀw``, where each has an exact answer."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from sharpscope.curvature import Objective
from sharpscope.measures import SharpnessSettings, measure
from tests.measures.models import quadratic_objective, random_psd

D = 6


def trust_region_max(A: Tensor, g: Tensor, rho: float) -> float:
    """``max_{‖δ‖≤ρ} gᵀδ + ½ δᵀAδ`` for PSD ``A`` by the secular equation: the maximiser is on the sphere,
    ``δ(μ) = (μI − A)⁻¹ g`` with ``μ > λ_max`` and ``‖δ(μ)‖ = ρ`` (bisection on ``μ``)."""
    lam, V = torch.linalg.eigh(A)
    c = V.T @ g
    lo, hi = float(lam[-1]), float(lam[-1]) + float(g.norm()) / rho + 1.0
    for _ in range(200):
        mu = (lo + hi) / 2
        norm = float(torch.sqrt(((c / (mu - lam)) ** 2).sum()))
        lo, hi = (mu, hi) if norm > rho else (lo, mu)
    delta = V @ (c / (hi - lam))
    return float(g @ delta + 0.5 * delta @ A @ delta)


def test_worst_l2_at_the_minimum_is_half_rho_squared_lambda_max(single_thread: None) -> None:
    A = random_psd(D, 0)
    zero = torch.zeros(D, dtype=torch.float64)
    result = measure("worst", quadratic_objective(A, zero, zero), SharpnessSettings(rho=0.3, steps=100, restarts=3))
    exact = 0.3**2 * float(torch.linalg.eigvalsh(A)[-1]) / 2
    assert result.value == pytest.approx(exact, rel=1e-4)
    assert result.value <= exact * (1 + 1e-12)  # a feasible point's value
    assert result.convergence is not None and result.convergence["restarts"] == 3
    assert result.forwards == result.backwards == 1 + 3 * 101


def test_worst_l2_away_from_the_minimum_matches_a_trust_region_solve(single_thread: None) -> None:
    A = random_psd(D, 1)
    gen = torch.Generator().manual_seed(2)
    b, w = torch.randn(D, generator=gen, dtype=torch.float64), torch.randn(D, generator=gen, dtype=torch.float64)
    rho = 0.7
    result = measure("worst", quadratic_objective(A, b, w), SharpnessSettings(rho=rho, steps=100, restarts=2))
    exact = trust_region_max(A, A @ w + b, rho)
    assert result.value == pytest.approx(exact, rel=1e-5)
    assert result.value <= exact * (1 + 1e-12)
    assert abs(float(result.convergence["last_gain"])) < 1e-5 * exact  # type: ignore[index, arg-type]


def test_worst_linf_on_a_diagonal_quadratic_has_its_closed_form(single_thread: None) -> None:
    a = torch.linspace(0.5, 3.0, D, dtype=torch.float64)
    gen = torch.Generator().manual_seed(3)
    b, w = torch.randn(D, generator=gen, dtype=torch.float64), torch.randn(D, generator=gen, dtype=torch.float64)
    rho = 0.2
    result = measure("worst", quadratic_objective(torch.diag(a), b, w),
                     SharpnessSettings(rho=rho, norm="linf", steps=30, restarts=2))
    g = a * w + b
    exact = float((rho * g.abs() + 0.5 * a * rho**2).sum())  # each coordinate at ρ·sign(g_i)
    assert result.value == pytest.approx(exact, rel=1e-10)


def test_worst_adaptive_l2_at_the_minimum_is_the_top_eigenvalue_of_the_rescaled_hessian(single_thread: None) -> None:
    A = random_psd(D, 4)
    w = torch.linspace(0.5, 2.0, D, dtype=torch.float64)
    b = -A @ w  # w is the minimum
    result = measure("worst", quadratic_objective(A, b, w),
                     SharpnessSettings(rho=0.2, adaptive=True, steps=100, restarts=3))
    S = torch.diag(w.abs())
    exact = 0.2**2 * float(torch.linalg.eigvalsh(S @ A @ S)[-1]) / 2
    assert result.value == pytest.approx(exact, rel=1e-4)


def test_keskar_sharpness_on_a_diagonal_quadratic(single_thread: None) -> None:
    a = torch.linspace(0.5, 3.0, D, dtype=torch.float64)
    gen = torch.Generator().manual_seed(5)
    b, w = torch.randn(D, generator=gen, dtype=torch.float64), torch.randn(D, generator=gen, dtype=torch.float64)
    eps = 1e-2
    result = measure("keskar", quadratic_objective(torch.diag(a), b, w), SharpnessSettings(epsilon=eps))
    box = eps * (w.abs() + 1)
    g, loss = a * w + b, float(0.5 * (a * w * w).sum() + b @ w)
    rise = float((box * g.abs() + 0.5 * a * box**2).sum())
    assert result.value == pytest.approx(100 * rise / (1 + loss), rel=1e-10)
    assert result.details["loss"] == pytest.approx(loss, rel=1e-12)


@pytest.mark.parametrize("norm", ["l2", "linf"])
@pytest.mark.parametrize("adaptive", [False, True])
def test_average_sharpness_is_half_the_perturbation_variance_times_the_curvature(norm: str, adaptive: bool) -> None:
    A = random_psd(D, 6)
    gen = torch.Generator().manual_seed(7)
    b, w = torch.randn(D, generator=gen, dtype=torch.float64), torch.randn(D, generator=gen, dtype=torch.float64)
    rho = 0.4
    result = measure("average", quadratic_objective(A, b, w),
                     SharpnessSettings(rho=rho, norm=norm, adaptive=adaptive, samples=400, seed=1))  # type: ignore[arg-type]
    variance = rho**2 / D if norm == "l2" else rho**2 / 3  # per coordinate of z
    s = w.abs() if adaptive else torch.ones(D, dtype=torch.float64)
    exact = variance * float((torch.diag(A) * s * s).sum()) / 2  # E ½ (s⊙z)ᵀA(s⊙z)
    assert result.stderr is not None and 0 < result.stderr < 0.2 * exact
    assert abs(result.value - exact) <= 4 * result.stderr
    assert result.forwards == 1 + 2 * 400 and result.backwards == 0


@pytest.mark.parametrize("adaptive", [False, True])
def test_pac_bayes_sigma_on_a_quadratic(adaptive: bool) -> None:
    A = random_psd(D, 8)
    w = torch.linspace(-2.0, 2.0, D, dtype=torch.float64)
    target = 0.1
    result = measure("pacbayes", quadratic_objective(A, torch.zeros(D, dtype=torch.float64), w),
                     SharpnessSettings(target=target, adaptive=adaptive, samples=400, tol=1e-3))
    sigma = float(result.details["sigma"])  # type: ignore[arg-type]
    s2 = w**2 if adaptive else torch.ones(D, dtype=torch.float64)
    curvature = float((torch.diag(A) * s2).sum())  # E L(w + σ s⊙z) − L(w) = σ² Σ A_ii s_i² / 2 (w·A linear term averages out)
    assert result.stderr is not None
    assert abs(sigma**2 * curvature / 2 - target) <= 4 * result.stderr + 3e-3 * target
    assert sigma == pytest.approx(math.sqrt(2 * target / curvature), rel=0.1)
    assert result.value == pytest.approx(1 / sigma**2)


def test_m_sharpness_of_least_squares_averages_each_batch_exact_answer(single_thread: None) -> None:
    gen = torch.Generator().manual_seed(9)
    X, y = torch.randn(24, 3, generator=gen, dtype=torch.float64), torch.randn(24, 1, generator=gen, dtype=torch.float64)
    model = torch.nn.Linear(3, 1, bias=False).double()
    objective = Objective(model, torch.nn.MSELoss(), (X, y), batch_size=12)
    rho, m = 0.3, 8
    worst = measure("worst", objective, SharpnessSettings(rho=rho, m=m, steps=100, restarts=2))
    average = measure("average", objective, SharpnessSettings(rho=rho, m=m, samples=200))
    w = model.weight.detach().reshape(-1)
    exact_worst, exact_average = [], []
    for start in (0, 12):  # each probe batch of 12 gives one set of 8 (4 left out)
        Xk, yk = X[start:start + m], y[start:start + m, 0]
        A = 2 * Xk.T @ Xk / m  # Hessian of the mean squared error
        g = 2 * Xk.T @ (Xk @ w - yk) / m
        exact_worst.append(trust_region_max(A, g, rho))
        exact_average.append(rho**2 / 3 * float(torch.trace(A)) / 2)
    assert worst.details["sets"] == 2
    assert worst.value == pytest.approx(sum(exact_worst) / 2, rel=1e-5)
    assert worst.stderr == pytest.approx(abs(exact_worst[0] - exact_worst[1]) / 2, rel=1e-4)
    assert average.stderr is not None and abs(average.value - sum(exact_average) / 2) <= 4 * average.stderr
