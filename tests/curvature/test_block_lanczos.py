"""Block Lanczos against dense float64 eigendecompositions: repeated and clustered eigenvalues, network
Hessians, warm starts, deflation and the cost it reports."""

from __future__ import annotations

import pytest
import torch

from sharpscope import ConfigError, HessianOperator, LambdaOperator, MatrixOperator, lanczos
from tests.curvature.conftest import dense_hessian, make_objective
from tests.curvature.test_lanczos_stopping import SPECTRA, spectrum, with_spectrum


def clustered_spectrum(n: int = 200) -> torch.Tensor:
    """A bulk on [0, 1] under a triple eigenvalue 10, a cluster 9.99 / 9.98 and an outlier 5."""
    lam = torch.linspace(0.0, 1.0, n, dtype=torch.float64)
    lam[-6:] = torch.tensor([5.0, 9.98, 9.99, 10.0, 10.0, 10.0], dtype=torch.float64)
    return lam


def subspace_sine(Y: torch.Tensor, U: torch.Tensor) -> float:
    """Sine of the largest principal angle between span(Y) and span(U) (orthonormal columns)."""
    Qy = torch.linalg.qr(Y)[0]
    return float(torch.linalg.matrix_norm(Qy - U @ (U.T @ Qy), ord=2))


class CountingOperator(LambdaOperator):
    """A dense matrix that records the width of every block it multiplies."""

    def __init__(self, A: torch.Tensor) -> None:
        super().__init__(lambda V: A @ V, A.shape[0])
        self.widths: list[int] = []

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        self.widths.append(V.shape[1])
        return super()._matmat(V)


def test_repeated_and_clustered_eigenvalues_match_the_dense_answer() -> None:
    lam = clustered_spectrum()
    A = with_spectrum(lam, seed=3)
    values, vectors = torch.linalg.eigh(A)
    exact, U = values.flip(0)[:6], vectors.flip(1)[:, :6]
    op = CountingOperator(A)
    res = lanczos(op, k=6, block=4, tol=1e-10, seed=0)
    assert res.converged and res.settings["method"] == "block_lanczos" and res.settings["block"] == 4
    assert torch.allclose(res.eigenvalues, exact, rtol=0, atol=1e-9), (res.eigenvalues, exact)
    assert res.eigenvalues[:3].tolist() == pytest.approx([10.0] * 3, abs=1e-9)  # all three copies
    assert subspace_sine(res.eigenvectors, U) < 1e-7  # the whole top-6 subspace
    for i in (3, 4, 5):  # distinct eigenvalues: each Ritz vector is its eigenvector up to sign
        assert abs(float(res.eigenvectors[:, i] @ U[:, i])) > 1 - 1e-8
    # every product is one block of 4, and the reported cost counts vectors
    assert set(op.widths) == {4} and res.hvps == 4 * len(op.widths) == 4 * res.settings["steps"]
    # reported residuals are the true relative residuals of the Ritz pairs
    Y = res.eigenvectors
    true = (A @ Y - Y * res.eigenvalues).norm(dim=0) / res.eigenvalues.abs()
    assert torch.allclose(res.residuals, true, rtol=1e-3, atol=1e-13)
    assert bool((res.residuals < 1e-10).all())


@pytest.mark.parametrize("which", ["SA", "BE"])
def test_other_ends_of_the_spectrum(which: str) -> None:
    lam = clustered_spectrum(120)
    lam[:3] = torch.tensor([-4.0, -4.0, -3.0], dtype=torch.float64)
    A = with_spectrum(lam, seed=4)
    res = lanczos(MatrixOperator(A), k=4, which=which, block=3, tol=1e-10, max_iter=120, seed=1)
    ordered = torch.sort(lam).values
    expected = ordered[:4] if which == "SA" else torch.cat([ordered[-2:].flip(0), ordered[:2].flip(0)])
    assert torch.allclose(res.eigenvalues, expected, atol=1e-9), (res.eigenvalues, expected)


def test_network_hessian_top_eigenpairs(problem: str) -> None:
    H = dense_hessian(problem)
    values, vectors = torch.linalg.eigh(H)
    exact, U = values.flip(0)[:3], vectors.flip(1)[:, :3]
    op = HessianOperator(make_objective(problem))
    res = lanczos(op, k=3, block=3, tol=1e-10, max_iter=op.dim, seed=0)
    assert res.converged and res.hvps < op.dim
    assert torch.allclose(res.eigenvalues, exact, rtol=1e-10, atol=1e-12), (res.eigenvalues, exact)
    assert subspace_sine(res.eigenvectors, U) < 1e-7
    single = lanczos(HessianOperator(make_objective(problem)), k=3, tol=1e-10, max_iter=op.dim, seed=0)
    assert torch.allclose(res.eigenvalues, single.eigenvalues, rtol=1e-10, atol=1e-12)


def test_warm_start_from_a_block_of_eigenvectors() -> None:
    A = with_spectrum(clustered_spectrum(), seed=5)
    U = torch.linalg.eigh(A)[1].flip(1)
    res = lanczos(MatrixOperator(A), k=3, block=3, tol=1e-8, v0=U[:, :3], seed=0, guards=0)
    assert res.settings["warm_start"] and res.hvps == 3 and res.converged  # the start block is invariant
    guarded = lanczos(MatrixOperator(A), k=3, block=3, tol=1e-8, v0=U[:, :3], seed=0)
    assert guarded.converged and guarded.hvps > 3  # a guard lies outside the invariant block: it is searched for
    assert res.eigenvalues.tolist() == pytest.approx([10.0, 10.0, 10.0], abs=1e-12)
    cold = lanczos(MatrixOperator(A), k=5, block=3, tol=1e-8, seed=0)
    warm = lanczos(MatrixOperator(A), k=5, block=3, tol=1e-8, v0=U[:, :2] + 1e-3 * U[:, 10:12], seed=0)
    assert torch.allclose(warm.eigenvalues, cold.eigenvalues, atol=1e-7)
    assert warm.hvps < cold.hvps


def test_whole_space_and_deflation() -> None:
    A = with_spectrum(torch.arange(1.0, 8.0, dtype=torch.float64), seed=6)
    op = CountingOperator(A)
    res = lanczos(op, k=2, block=3, tol=1e-14, seed=0)  # 3 + 3 + 1 vectors span R^7
    assert res.converged and op.widths == [3, 3, 1] and res.settings["basis_vectors"] == 7
    assert res.eigenvalues.tolist() == pytest.approx([7.0, 6.0], abs=1e-12)
    # three distinct eigenvalues: the block Krylov space of three start vectors is invariant at 7 dimensions,
    # so the third block collapses to one live column and two fresh directions replace the others
    lam = torch.cat([torch.tensor([5.0]), torch.full((10,), 3.0), torch.ones(39)]).double()
    A = with_spectrum(lam, seed=7)
    res = lanczos(MatrixOperator(A), k=6, block=3, tol=1e-10, seed=0)
    assert res.converged and res.settings["restarts"] > 0
    assert res.eigenvalues.tolist() == pytest.approx([5.0] + [3.0] * 5, abs=1e-12)
    Y = res.eigenvectors
    assert float((A @ Y - Y * res.eigenvalues).norm(dim=0).max()) < 1e-12
    assert float((Y.T @ Y - torch.eye(6, dtype=torch.float64)).abs().max()) < 1e-12


def test_block_choice_and_bad_input() -> None:
    A = with_spectrum(clustered_spectrum(40), seed=8)
    op = HessianOperator(make_objective("mlp"), block_size=4)
    assert lanczos(op, k=6, block="auto", tol=1e-6, seed=0).settings["block"] == 4  # capped at the op's block
    res = lanczos(MatrixOperator(A), k=3, block="auto", tol=1e-6, seed=0)
    assert res.settings["block"] == 3 and res.settings["block_rule"].startswith("auto")
    assert lanczos(MatrixOperator(A), k=2, tol=1e-6, seed=0).settings["block"] == 1
    for bad, message in ((0, "block"), (41, "block"), ("big", "block"), (3.0, "block")):
        with pytest.raises(ConfigError, match=message):
            lanczos(MatrixOperator(A), k=2, block=bad, seed=0)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="more than the block size"):
        lanczos(MatrixOperator(A), k=2, block=2, v0=torch.randn(40, 3, dtype=torch.float64))
    with pytest.raises(ConfigError, match="linearly dependent"):
        lanczos(MatrixOperator(A), k=2, block=2, v0=torch.ones(40, 2, dtype=torch.float64))
    with pytest.raises(ConfigError, match="exceeds max_iter"):
        lanczos(MatrixOperator(A), k=2, block=5, max_iter=4)


@pytest.mark.parametrize("name", ["gap 2%", "outliers", "gap to the bulk"])
def test_eigenvalue_rule_bound_covers_the_true_error(name: str) -> None:
    lam = spectrum(SPECTRA[name])
    exact = torch.sort(lam, descending=True).values
    res = lanczos(MatrixOperator(with_spectrum(lam, seed=2)), k=2, block=2, tol=1e-4, stop="eigenvalue",
                  max_iter=400, seed=3)
    assert res.converged and res.settings["stop"] == "eigenvalue" and res.error_bounds is not None
    assert res.settings["basis_vectors"] >= res.settings["min_steps"]
    assert bool(((res.eigenvalues - exact[:2]).abs() <= res.error_bounds).all()), (res.eigenvalues, exact[:2])
    assert bool((res.error_bounds < 1e-4 * res.eigenvalues.abs()).all())
