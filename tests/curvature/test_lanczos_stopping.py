"""Lanczos stopping rules, error bounds, the chunked basis and the memory check, against dense float64 answers."""

from __future__ import annotations

import importlib

import pytest
import torch

from sharpscope import ConfigError, MatrixOperator, lanczos
from sharpscope.curvature.algorithms.krylov_basis import KrylovBasis

lanczos_module = importlib.import_module("sharpscope.curvature.algorithms.lanczos")  # the package re-exports the function


def with_spectrum(eigenvalues: torch.Tensor, seed: int = 0) -> torch.Tensor:
    n = eigenvalues.numel()
    Q, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)))
    return (Q * eigenvalues) @ Q.T


def spectrum(top: list[float], n: int = 400) -> torch.Tensor:
    """A bulk on [0, 1] (a network Hessian's shape) under the given outliers."""
    lam = torch.linspace(0.0, 1.0, n, dtype=torch.float64)
    lam[-len(top):] = torch.tensor(sorted(top), dtype=torch.float64)
    return lam


SPECTRA = {
    "gap 10%": [10.0, 9.0],
    "gap 2%": [10.0, 9.8],
    "large gap": [10.0],
    "gap 1%": [10.0, 9.9],
    "gap to the bulk": [1.5],
    "outliers": [30.0, 20.0, 12.0],
}


@pytest.mark.parametrize("name", SPECTRA)
@pytest.mark.parametrize("tol", [1e-2, 1e-4, 1e-7])
@pytest.mark.parametrize("seed", [0, 1])
def test_reported_bound_covers_the_true_error(name: str, tol: float, seed: int) -> None:
    lam = spectrum(SPECTRA[name])
    exact = torch.sort(lam, descending=True).values
    A = with_spectrum(lam, seed=seed)
    for k in (1, 2):
        res = lanczos(MatrixOperator(A), k=k, tol=tol, stop="eigenvalue", max_iter=400, seed=10 + seed)
        assert res.settings["stop"] == "eigenvalue" and res.error_bounds is not None
        error = (res.eigenvalues - exact[:k]).abs()
        assert bool((error <= res.error_bounds).all()), (name, k, error, res.error_bounds)
        if res.converged:
            assert bool((res.error_bounds < tol * res.eigenvalues.abs()).all())
        # the bound never exceeds the residual (which bounds the error without a gap) beyond rounding
        scale = res.eigenvalues.abs()
        assert bool((res.error_bounds <= (res.residuals + 1e-12) * scale).all())


def test_eigenvalue_rule_needs_fewer_products_for_the_same_eigenvalue_accuracy() -> None:
    A = with_spectrum(spectrum([10.0, 7.0, 5.0], n=1000))
    by_value = lanczos(MatrixOperator(A), k=1, tol=1e-6, stop="eigenvalue", seed=0)
    by_residual = lanczos(MatrixOperator(A), k=1, tol=1e-6, stop="residual", seed=0)
    assert by_value.converged and by_residual.converged
    assert abs(float(by_value.eigenvalues[0]) - 10.0) <= 1e-5
    assert by_value.hvps < by_residual.hvps
    assert by_residual.settings["stop"] == "residual"


def test_default_rule_is_recorded() -> None:
    A = with_spectrum(spectrum([3.0], n=50))
    res = lanczos(MatrixOperator(A), k=1, seed=0)
    assert res.settings["stop"] == lanczos_module.DEFAULT_STOP
    assert res.to_dict()["error_bounds"] == [float(b) for b in res.error_bounds]


def test_unknown_rule_is_refused() -> None:
    with pytest.raises(ConfigError, match="stop must be"):
        lanczos(MatrixOperator(torch.eye(3, dtype=torch.float64)), stop="gap")  # type: ignore[arg-type]


@pytest.mark.parametrize("stop", ["residual", "eigenvalue"])
def test_chunked_basis_gives_the_single_block_results(monkeypatch: pytest.MonkeyPatch, stop: str) -> None:
    A = with_spectrum(spectrum([1.3, 1.2, 1.1, 1.05], n=300), seed=3)
    monkeypatch.setattr(lanczos_module, "DEFAULT_CHUNK", 10_000)  # one block: every vector allocated at once
    whole = lanczos(MatrixOperator(A), k=3, tol=1e-9, stop=stop, seed=2)
    assert whole.settings["steps"] > 20  # the run crosses several chunk boundaries below
    for chunk in (1, 7, 16):
        monkeypatch.setattr(lanczos_module, "DEFAULT_CHUNK", chunk)
        part = lanczos(MatrixOperator(A), k=3, tol=1e-9, stop=stop, seed=2)
        assert part.settings["steps"] == whole.settings["steps"]
        torch.testing.assert_close(part.eigenvalues, whole.eigenvalues, rtol=1e-13, atol=0)
        torch.testing.assert_close(part.eigenvectors, whole.eigenvectors, rtol=0, atol=1e-10)
        allocated = part.settings["memory"]["basis_vectors_allocated"]
        assert part.settings["steps"] <= allocated <= part.settings["steps"] + chunk


def test_basis_memory_grows_with_the_steps_taken() -> None:
    A = with_spectrum(spectrum([50.0], n=2000))
    res = lanczos(MatrixOperator(A), k=1, tol=1e-3, max_iter=1000, seed=0)
    assert res.converged and res.settings["steps"] < 40
    assert res.settings["memory"]["basis_vectors_allocated"] <= res.settings["steps"] + 16
    assert res.settings["memory"]["estimate_bytes"] >= 1000 * 2000 * 8  # the worst case is what was checked


def test_krylov_basis_orthogonalizes_and_combines_like_a_dense_matrix() -> None:
    gen = torch.Generator().manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(50, 11, dtype=torch.float64, generator=gen))
    basis = KrylovBasis(50, torch.float64, torch.device("cpu"), chunk=4)
    for j in range(11):
        basis.append(Q[:, j])
    w = torch.randn(50, dtype=torch.float64, generator=gen)
    out, coeffs = basis.orthogonalize(w)
    torch.testing.assert_close(coeffs, Q.T @ w, rtol=0, atol=1e-13)
    torch.testing.assert_close(out, w - Q @ (Q.T @ w), rtol=0, atol=1e-13)
    s = torch.randn(11, 3, dtype=torch.float64, generator=gen)
    torch.testing.assert_close(basis.combine(s), Q @ s, rtol=0, atol=1e-13)
    assert basis.allocated == 12
