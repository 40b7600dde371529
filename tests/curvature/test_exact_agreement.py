"""The engine against dense float64 Hessians of tiny networks (MLP, CNN with BatchNorm)."""

from __future__ import annotations

import math

import pytest
import torch

from sharpscope import HessianOperator, MatrixOperator, Objective, hutchinson, hutchpp, lanczos, slq_density


@pytest.mark.parametrize("mode", ["fwd-rev", "rev-rev"])
def test_matvec_and_matmat_equal_dense_hessian(objective: Objective, reference_hessian: torch.Tensor, mode: str) -> None:
    H = reference_hessian
    op = HessianOperator(objective, mode=mode, block_size=3)
    V = torch.randn(objective.dim, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert torch.linalg.norm(op.matvec(V[:, 0]) - H @ V[:, 0]) <= 1e-10 * torch.linalg.norm(H @ V[:, 0])
    assert torch.linalg.norm(op.matmat(V) - H @ V) <= 1e-10 * torch.linalg.norm(H @ V)
    assert op.matvecs == 6


def test_finite_differences_approximate_dense_hessian(objective: Objective, reference_hessian: torch.Tensor) -> None:
    H = reference_hessian
    v = torch.randn(objective.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    hv = HessianOperator(objective, mode="fd").matvec(v)
    assert torch.linalg.norm(hv - H @ v) <= 1e-7 * torch.linalg.norm(H @ v)


def test_auto_mode_chooses_per_regime_and_records_why(objective: Objective, reference_hessian: torch.Tensor) -> None:
    op = HessianOperator(objective, block_size=4, cache_graphs=False)  # the cache would fix rev-rev
    assert op.describe()["mode_selection"] == {}  # nothing timed before the first product
    H = reference_hessian
    v = torch.randn(objective.dim, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(op.matvec(v[:, 0]), H @ v[:, 0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(op.matmat(v), H @ v, rtol=1e-10, atol=1e-12)
    info = op.describe()
    assert set(info["mode_selection"]) == {"probes=1", "probes=4"}
    for regime, trial in zip(("single", "block"), info["mode_selection"].values()):
        assert set(trial["trial_seconds_per_probe"]) == {"fwd-rev", "rev-rev"}
        assert trial["chosen"] == op.modes[regime] == min(trial["trial_seconds_per_probe"],
                                                          key=trial["trial_seconds_per_probe"].get)
    assert info["hvp_mode_requested"] == "auto" and info["bn"] == objective.bn
    assert op.matvecs == 7  # trial products are not counted as the caller's HVPs


def test_top5_and_most_negative_eigenvalues_match_eigvalsh(objective: Objective, reference_hessian: torch.Tensor) -> None:
    exact = torch.linalg.eigvalsh(reference_hessian)
    op = HessianOperator(objective, mode="fwd-rev")
    top = lanczos(op, k=5, tol=1e-10, seed=0)
    assert top.converged
    torch.testing.assert_close(top.eigenvalues, exact.flip(0)[:5], rtol=1e-8, atol=1e-10)
    bottom = lanczos(op, k=1, which="SA", tol=1e-10, seed=0)
    assert exact[0] < 0, "the test point should have a negative eigenvalue"
    torch.testing.assert_close(bottom.eigenvalues, exact[:1], rtol=1e-8, atol=1e-10)
    # Ritz vectors are eigenvectors: ‖H y − θ y‖ is as small as the reported residual says
    H = reference_hessian
    y, theta = top.eigenvectors[:, 0], top.eigenvalues[0]
    assert torch.linalg.norm(H @ y - theta * y) <= 1e-8 * abs(theta)


def test_hutchinson_and_hutchpp_within_four_standard_errors(objective: Objective, reference_hessian: torch.Tensor) -> None:
    H = reference_hessian
    exact = float(torch.trace(H))
    op = HessianOperator(objective, mode="fwd-rev")
    # the engine's operator gives the same estimate as the dense matrix from the same probes ...
    for estimator, m in ((hutchinson, 30), (hutchpp, 90)):
        on_op, on_dense = estimator(op, m, seed=0), estimator(MatrixOperator(H), m, seed=0)
        assert abs(on_op.estimate - on_dense.estimate) <= 1e-9 * abs(exact)
        assert on_op.hvps == m
    # ... so the statistics are checked over many seeds on the dense matrix (fast)
    dense = MatrixOperator(H)
    for estimator, m in ((hutchinson, 30), (hutchpp, 90)):  # Hutch++: 30 residual probes after the sketch
        z = []
        for seed in range(200):
            result = estimator(dense, m, seed=seed)
            assert math.isfinite(result.stderr) and result.stderr > 0
            z.append(abs(result.estimate - exact) / result.stderr)
        assert max(z[:50]) < 4, "every one of 50 seeds lands within 4 standard errors"
        coverage = sum(v < 2 for v in z) / len(z)
        assert 0.9 <= coverage <= 0.99, f"±2 SE should cover about 95% of 200 seeds, covered {coverage:.0%}"


def test_slq_weights_sum_to_one_and_give_the_trace(objective: Objective, reference_hessian: torch.Tensor) -> None:
    H = reference_hessian
    exact = float(torch.trace(H))
    op = HessianOperator(objective, mode="fwd-rev")
    density = slq_density(op, num_steps=30, num_runs=4, seed=0)
    assert density.hvps == 4 * 30
    torch.testing.assert_close(density.weights.sum(dim=1), torch.ones(4, dtype=torch.float64))
    same = slq_density(MatrixOperator(H), num_steps=30, num_runs=4, seed=0)
    torch.testing.assert_close(density.nodes, same.nodes, rtol=1e-8, atol=1e-10)
    # nodes lie inside the spectrum; with enough runs the quadrature's trace is within 5%
    eig = torch.linalg.eigvalsh(H)
    assert density.nodes.min() >= eig[0] - 1e-8 and density.nodes.max() <= eig[-1] + 1e-8
    many = slq_density(MatrixOperator(H), num_steps=30, num_runs=1500, grid_size=10, seed=1)
    assert abs(many.trace - exact) < 4 * many.trace_stderr
    assert abs(many.trace - exact) < 0.05 * abs(exact)
