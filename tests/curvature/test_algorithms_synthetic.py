"""Algorithms on synthetic operators with known spectra."""

from __future__ import annotations

import math
import statistics
import warnings

import pytest
import torch

from sharpscope import (
    ConfigError,
    ConvergenceWarning,
    LambdaOperator,
    MatrixOperator,
    ObjectiveError,
    hutchinson,
    hutchpp,
    lanczos,
    power_iteration,
    slq_density,
)


def with_spectrum(eigenvalues: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """``Q diag(λ) Qᵀ`` for a random orthogonal ``Q``."""
    n = eigenvalues.numel()
    Q, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)))
    return (Q * eigenvalues) @ Q.T


@pytest.fixture(scope="module")
def spectrum_2000() -> tuple[torch.Tensor, torch.Tensor]:
    """2000×2000, bulk on [-1, 1] plus outliers 30, 20, 12: the shape of a network Hessian."""
    lam = torch.linspace(-1.0, 1.0, 2000, dtype=torch.float64)
    lam[-3:] = torch.tensor([12.0, 20.0, 30.0], dtype=torch.float64)
    return with_spectrum(lam), lam


def test_u1_lanczos_top_eigenvalue(spectrum_2000: tuple[torch.Tensor, torch.Tensor]) -> None:
    A, lam = spectrum_2000
    result = lanczos(MatrixOperator(A), k=1, tol=1e-6, max_iter=50, seed=0, stop="residual")
    assert result.converged and result.hvps <= 50
    assert abs(result.eigenvalues[0] - 30.0) / 30.0 < 1e-6
    y = result.eigenvectors[:, 0]
    assert torch.linalg.norm(A @ y - result.eigenvalues[0] * y) / 30.0 <= 1e-6  # the residual is honest


def test_lanczos_which_and_ordering(spectrum_2000: tuple[torch.Tensor, torch.Tensor]) -> None:
    A, lam = spectrum_2000
    op = MatrixOperator(A)
    top = lanczos(op, k=3, tol=1e-8, seed=1)
    torch.testing.assert_close(top.eigenvalues, torch.tensor([30.0, 20.0, 12.0], dtype=torch.float64))
    small = lanczos(op, k=1, which="SA", tol=1e-6, max_iter=400, seed=1)
    assert abs(small.eigenvalues[0] + 1.0) < 1e-4
    both = lanczos(op, k=3, which="BE", tol=1e-6, max_iter=400, seed=1)
    torch.testing.assert_close(both.eigenvalues[:2], torch.tensor([30.0, 20.0], dtype=torch.float64))
    assert abs(both.eigenvalues[2] + 1.0) < 1e-4
    neg = with_spectrum(torch.tensor([-50.0, 1.0, 2.0, 40.0, 3.0], dtype=torch.float64))
    assert float(lanczos(MatrixOperator(neg), k=1, which="LM", tol=1e-10).eigenvalues[0]) == pytest.approx(-50.0)
    assert float(lanczos(MatrixOperator(neg), k=1, which="LA", tol=1e-10).eigenvalues[0]) == pytest.approx(40.0)


def test_lanczos_warns_instead_of_returning_unconverged_values_silently(spectrum_2000) -> None:
    A, _ = spectrum_2000
    with pytest.warns(ConvergenceWarning, match="raise max_iter"):
        result = lanczos(MatrixOperator(A), k=1, which="SA", tol=1e-10, max_iter=10, seed=0)
    assert not result.converged and result.residuals[0] > 1e-10 and result.hvps == 10


def test_lanczos_warm_start_needs_fewer_products(spectrum_2000) -> None:
    A, _ = spectrum_2000
    op = MatrixOperator(A)
    cold = lanczos(op, k=2, tol=1e-6, seed=0, stop="residual")
    perturbed = A + 1e-3 * with_spectrum(torch.linspace(0, 1, 2000, dtype=torch.float64), seed=5)
    warm = lanczos(MatrixOperator(perturbed), k=2, tol=1e-6, v0=cold.eigenvectors, seed=0, stop="residual")
    fresh = lanczos(MatrixOperator(perturbed), k=2, tol=1e-6, seed=0, stop="residual")
    assert warm.converged and warm.hvps < fresh.hvps
    torch.testing.assert_close(warm.eigenvalues, fresh.eigenvalues, rtol=1e-6, atol=0)


def test_lanczos_continues_past_an_invariant_subspace() -> None:
    B = torch.randn(50, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    A = B @ B.T  # rank 3: Krylov spaces are at most 4-dimensional before breakdown
    exact = torch.linalg.eigvalsh(A).flip(0)
    result = lanczos(MatrixOperator(A), k=5, tol=1e-8, seed=0)
    assert result.converged and result.settings["restarts"] >= 1
    torch.testing.assert_close(result.eigenvalues, exact[:5], rtol=1e-8, atol=1e-8)


def test_lanczos_exact_when_the_space_is_spanned() -> None:
    A = with_spectrum(torch.arange(1.0, 9.0, dtype=torch.float64))
    result = lanczos(MatrixOperator(A), k=8, tol=1e-12)
    assert result.converged and result.hvps == 8
    torch.testing.assert_close(result.eigenvalues, torch.arange(8.0, 0.0, -1, dtype=torch.float64))


def test_lanczos_overflow_is_a_clear_error_not_a_scipy_traceback() -> None:
    A = with_spectrum(torch.tensor([3e38, 1.0, 2.0, 4.0], dtype=torch.float64)).float()
    with pytest.raises(ObjectiveError, match="overflow"):
        lanczos(MatrixOperator(A), k=1)


def test_power_iteration_agrees_and_costs_more(spectrum_2000) -> None:
    A, _ = spectrum_2000
    power = power_iteration(MatrixOperator(A), tol=1e-4, max_iter=500, seed=0)
    krylov = lanczos(MatrixOperator(A), k=1, tol=1e-4, seed=0)
    assert power.converged and abs(power.eigenvalues[0] - 30.0) < 1e-6 * 30
    assert krylov.hvps < power.hvps
    change = power_iteration(MatrixOperator(A), tol=1e-4, criterion="change", max_iter=500, seed=0)
    assert change.converged and change.hvps < power.hvps


def test_u2_hutchinson_mean_and_variance() -> None:
    gen = torch.Generator().manual_seed(0)
    B = torch.randn(200, 200, dtype=torch.float64, generator=gen)
    A = B @ B.T / 200
    ell = 10_000
    result = hutchinson(MatrixOperator(A), ell, block_size=500, seed=0)
    exact = float(torch.trace(A))
    assert abs(result.estimate - exact) < 3 * result.stderr
    predicted = 2 * (float((A**2).sum()) - float((torch.diagonal(A) ** 2).sum()))
    assert abs(float(result.samples.var()) / predicted - 1) < 0.1
    gauss = hutchinson(MatrixOperator(A), ell, distribution="gaussian", block_size=500, seed=0)
    assert abs(float(gauss.samples.var()) / (2 * float((A**2).sum())) - 1) < 0.1


def test_hutchinson_stops_early_at_the_requested_relative_error() -> None:
    A = with_spectrum(torch.linspace(1.0, 2.0, 300, dtype=torch.float64))
    result = hutchinson(MatrixOperator(A), 10_000, rtol=0.01, block_size=16, seed=0)
    assert result.hvps < 10_000 and result.relative_stderr < 0.01
    assert result.hvps == result.samples.numel()


def test_u3_hutchpp_beats_hutchinson_on_decaying_spectra() -> None:
    lam = 1.0 / torch.arange(1, 1001, dtype=torch.float64) ** 2
    A = with_spectrum(lam)
    exact = float(lam.sum())
    errors: dict[tuple[str, int], float] = {}
    for m in (30, 99, 300):
        for name, fn in (("hutchinson", hutchinson), ("hutch++", hutchpp)):
            errs = [abs(fn(MatrixOperator(A), m, seed=s).estimate - exact) / exact for s in range(15)]
            errors[name, m] = statistics.median(errs)
        assert errors["hutch++", m] < errors["hutchinson", m]
    # error falls roughly like 1/m for Hutch++ and like 1/sqrt(m) for Hutchinson
    assert errors["hutch++", 30] / errors["hutch++", 300] > errors["hutchinson", 30] / errors["hutchinson", 300]
    assert errors["hutchinson", 30] / errors["hutchinson", 300] == pytest.approx(math.sqrt(10), rel=0.6)


def test_u4_slq_density_of_a_known_spectrum() -> None:
    lam = torch.cat([torch.linspace(0.0, 1.0, 1990, dtype=torch.float64),
                     torch.tensor([5.0, 6, 7, 8, 9, 10, 11, 12, 13, 14], dtype=torch.float64)])
    op = MatrixOperator(with_spectrum(lam))
    result = slq_density(op, num_steps=90, num_runs=10, grid_size=10_000, seed=0)
    mass = torch.trapezoid(result.density, result.grid)
    assert abs(float(mass) - 1) < 1e-3
    assert abs(result.trace - float(lam.sum())) < 0.05 * float(lam.sum())
    assert abs(float(result.nodes.max()) - 14.0) < 1e-6  # outliers converge as Ritz values
    # re-smoothing reuses the nodes; a wider kernel still integrates to one
    wider = result.smooth(1e-2)
    assert abs(float(torch.trapezoid(wider, result.grid)) - 1) < 2e-2
    assert result.hvps == 900


def test_operators_validate_shapes_and_count_products() -> None:
    op = LambdaOperator(lambda V: 2 * V, 4)
    assert torch.equal(op.matvec(torch.ones(4, dtype=torch.float64)), torch.full((4,), 2.0, dtype=torch.float64))
    op.matmat(torch.ones(4, 3, dtype=torch.float64))
    assert op.matvecs == 4
    with pytest.raises(ConfigError):
        op.matmat(torch.ones(3, 3))
    with pytest.raises(ConfigError, match="Hutch\\+\\+ needs"):
        hutchpp(op, 5)
    with pytest.raises(ConfigError, match="distribution"):
        hutchinson(op, 4, distribution="uniform")


def test_unseeded_runs_record_the_seed_that_reproduces_them() -> None:
    A = MatrixOperator(with_spectrum(torch.linspace(0.0, 5.0, 60, dtype=torch.float64)))
    for algorithm in (lambda s: lanczos(A, k=2, tol=1e-4, seed=s), lambda s: hutchpp(A, 12, seed=s),
                      lambda s: slq_density(A, 10, 3, seed=s), lambda s: power_iteration(A, max_iter=5, seed=s)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            first = algorithm(None)
            again = algorithm(first.settings["seed"])
        assert isinstance(first.settings["seed"], int)
        assert first.to_dict() | {"seconds": 0} == again.to_dict() | {"seconds": 0}
    assert hutchinson(A, 4, seed=torch.Generator().manual_seed(3)).settings["seed"] == "generator"
    with pytest.raises(ConfigError, match="seed must be"):
        hutchinson(A, 4, seed=-1)
