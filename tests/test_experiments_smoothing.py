"""The smoothing identity E_u ∇f(x + ρu) − ∇f(x) = (ρ²/2)∇tr̄(x): antithetic pairs against closed forms on
polynomials, the noise ceiling, the verdict rule, and the network's non-smooth layers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sharpscope.errors import ConfigError
from sharpscope.experiments.smoothing import (
    judge_identity,
    nonsmooth_parts,
    smoothing_draw,
    smoothing_identity,
    split_half_ceiling,
)
from sharpscope.models import build_model
from sharpscope.optim import sample_unit_sphere

D = 4
GEN = torch.Generator().manual_seed(3)
A = torch.rand(D, generator=GEN, dtype=torch.float64) + 0.5  # quartic coefficients
C = torch.randn(D, D, D, generator=GEN, dtype=torch.float64)
C = sum(C.permute(*p) for p in ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))) / 6  # symmetric
THETA = torch.tensor([0.3, -0.2, 0.5, 0.1], dtype=torch.float64)


def poly(theta: torch.Tensor) -> torch.Tensor:
    """f(θ) = Σ a_i θ_i⁴ + Σ C_ijk θ_i θ_j θ_k: ∇f is a cubic polynomial."""
    return (A * theta**4).sum() + torch.einsum("ijk,i,j,k->", C, theta, theta, theta)


def third_derivative(theta: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """∇³f(θ)[u, u] in closed form: 24 a_i θ_i u_i² + 6 Σ_jk C_ijk u_j u_k."""
    return 24 * A * theta * u**2 + 6 * torch.einsum("ijk,j,k->i", C, u, u)


def poly_gradient(theta: torch.Tensor) -> torch.Tensor:
    """∇f(θ) in closed form: 4 a_i θ_i³ + 3 Σ_jk C_ijk θ_j θ_k."""
    return 4 * A * theta**3 + 3 * torch.einsum("ijk,j,k->i", C, theta, theta)


def trace_gradient(theta: torch.Tensor) -> torch.Tensor:
    """∇ tr ∇²f(θ) in closed form: 24 a_i θ_i + 6 Σ_j C_ijj."""
    return 24 * A * theta + 6 * torch.einsum("ijj->i", C)


def test_antithetic_pairs_cancel_the_first_order_term_of_a_quadratic_exactly() -> None:
    """On f = ½θᵀMθ + bᵀθ the pair's mean difference is 0; a single draw's is ρMu."""
    g = torch.Generator().manual_seed(0)
    m = torch.randn(D, D, generator=g, dtype=torch.float64)
    m = m @ m.T
    b = torch.randn(D, generator=g, dtype=torch.float64)
    grad = lambda t: m @ t + b  # noqa: E731
    g0 = grad(THETA)
    for rho in (1e-2, 0.3):
        u = sample_unit_sphere([THETA], g)[0]
        assert torch.allclose(smoothing_draw(grad, THETA, g0, rho, u), torch.zeros_like(THETA), atol=1e-13)
        assert torch.allclose(smoothing_draw(grad, THETA, g0, rho, u, "independent"), rho * m @ u, atol=1e-13)


def test_antithetic_pairs_on_a_quartic_and_cubic_give_the_closed_form() -> None:
    """∇f is cubic, so the pair's mean difference is exactly (ρ²/2)∇³f(θ)[u, u] (no ρ³ term; no ρ⁴ term in a
    cubic gradient), at any ρ."""
    grad = torch.func.grad(poly)
    g0 = grad(THETA)
    g = torch.Generator().manual_seed(1)
    for rho in (1e-3, 1e-1, 1.0):
        u = sample_unit_sphere([THETA], g)[0]
        want = rho**2 / 2 * third_derivative(THETA, u)
        got = smoothing_draw(grad, THETA, g0, rho, u)
        assert torch.allclose(got, want, rtol=1e-8, atol=1e-12 * max(1.0, rho**2))
    with pytest.raises(ConfigError, match="pairing"):
        smoothing_draw(grad, THETA, g0, 0.1, u, "paired")


def test_the_mean_over_pairs_tends_to_the_trace_gradient() -> None:
    """E[u_j u_k] = δ_jk/d on the sphere, so E_u (ρ²/2)∇³f[u, u] = (ρ²/2)∇tr(H)/d: the mean of 1 000 pairs is
    within 6 standard errors of it in every coordinate (gradients in closed form)."""
    assert torch.allclose(torch.func.grad(poly)(THETA), poly_gradient(THETA), rtol=1e-12)
    grad, g0 = poly_gradient, poly_gradient(THETA)
    g = torch.Generator().manual_seed(2)
    rho = 0.1
    draws = torch.stack([smoothing_draw(grad, THETA, g0, rho, sample_unit_sphere([THETA], g)[0]) for _ in range(1000)])
    want = rho**2 / 2 * trace_gradient(THETA) / D
    se = draws.std(0) / math.sqrt(len(draws))
    assert ((draws.mean(0) - want).abs() <= 6 * se).all()
    assert (se < 0.1 * want.abs().max()).all()  # the test has power: the standard errors are small


class Coordinates(nn.Module):
    """Outputs its own parameter vector, so a loss of the output is a function of the parameters alone."""

    def __init__(self, theta: torch.Tensor) -> None:
        super().__init__()
        self.theta = nn.Parameter(theta.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.theta.expand(x.shape[0], -1)


def test_identity_on_a_quartic_converges_with_draws_and_the_ceiling_is_near_one() -> None:
    """A separable quartic: the Hessian is diagonal, so the Hutchinson trace gradient is exact with any probes
    (target halves agree: ceiling 1) and the antithetic mean tends to it: cosine → 1, norm ratio → 1."""
    a = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    loss = lambda out, y: (a * out[0] ** 4).sum()  # noqa: E731
    x, y = torch.zeros(1, 1, dtype=torch.float64), torch.zeros(1)
    model = Coordinates(torch.tensor([0.05, -0.08, 0.12], dtype=torch.float64))
    res = smoothing_identity(model, loss, x, y, rhos=(0.1,), draws=256, probes=4, counts=(16, 256), seed=0)
    rows = res["rhos"]["0.1"]
    assert rows[-1]["draws"] == 256 and rows[-1]["cosine"] > 0.99
    assert abs(rows[-1]["norm_ratio"] - 1) < 0.1
    assert res["dim"] == 3 and res["pairing"] == "antithetic" and res["gradients"] == 1 + 2 * 256
    assert res["target_split_cosine"] == pytest.approx(1.0) and res["target_ceiling"] == pytest.approx(1.0)
    assert res["noise"]["0.1"]["ceiling"] > 0.99
    with pytest.raises(ConfigError, match="pairing"):
        smoothing_identity(model, loss, x, y, pairing="paired")


def test_split_half_ceiling() -> None:
    """With signal s and noise variance 2σ² in each half, c = s²/(s² + 2σ²) and the full average's cosine with s
    is √(s²/(s² + σ²)) = √(2c/(1 + c))."""
    s2, var = 1.0, 0.5
    c = s2 / (s2 + 2 * var)
    assert split_half_ceiling(c) == pytest.approx(math.sqrt(s2 / (s2 + var)))
    assert split_half_ceiling(1.0) == 1.0 and split_half_ceiling(-0.2) == 0.0
    assert math.isnan(split_half_ceiling(math.nan))


def _result(cos: float, ceiling: float, pairing: str = "antithetic") -> dict:
    return {"pairing": pairing, "rhos": {"0.01": [{"draws": 64, "cosine": cos}]}, "noise": {"0.01": {"ceiling": ceiling}}}


def test_the_verdict_reads_the_cosine_against_the_noise_ceiling() -> None:
    assert judge_identity(_result(0.6, 0.8)).label == "holds"
    old = judge_identity(_result(0.01, 0.9, "independent"), ["ReLU"])
    assert old.label == "not testable at this scale" and "first-order term" in old.reason
    kinks = judge_identity(_result(0.05, 0.9), ["MaxPool2d", "ReLU"])
    assert kinks.label == "does not hold" and "not twice differentiable (MaxPool2d, ReLU)" in kinks.reason
    assert judge_identity(_result(0.05, 0.9)).label == "does not hold"
    capped = judge_identity(_result(0.3, 0.4))
    assert capped.label == "not testable at this scale" and "75% of the noise ceiling" in capped.reason
    assert judge_identity({"rhos": {}}).label == "not run"


def test_nonsmooth_parts() -> None:
    relu = build_model("cnn", in_channels=3, num_classes=10, channels=[4, 8], norm="gn", image_size=8)
    gelu = build_model("cnn", in_channels=3, num_classes=10, channels=[4, 8], norm="gn", image_size=8,
                       activation="gelu", pool="avg")
    assert nonsmooth_parts(relu) == ["MaxPool2d", "ReLU"] and nonsmooth_parts(gelu) == []
