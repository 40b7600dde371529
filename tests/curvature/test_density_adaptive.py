"""SLQ densities against dense eigendecompositions: fixed steps and the adaptive stopping rule.

For a start vector ``v`` the quadrature converges to the measure ``Σ_i (q_iᵀv)² δ(t − λ_i)`` (unit
``v``); with the eigendecomposition known, that limit for the very starts ``slq_density`` draws is
computed here independently. The L1 distance to it is the truncation error of the Lanczos runs;
the distance from it to the exact density ``(1/d) Σ_i N(t; λ_i, σ²)`` is the sampling error of the
random starts, which no number of steps removes.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from sharpscope import ConfigError, ConvergenceWarning, HessianOperator, MatrixOperator, Objective, slq_density
from sharpscope.curvature.algorithms.density import lockstep_tridiagonals, smoothed_l1
from sharpscope.curvature.operators.linear_operator import LambdaOperator
from sharpscope.curvature.results import DensityResult, gaussian_density
from sharpscope.probe import ProbeSettings, probe
from tests.curvature.conftest import mlp_data, tiny_mlp

DIM, RUNS, SEED, TOL = 600, 10, 0, 0.01
SPECTRA = {  # (eigenvalues, relative kernel width sigma2)
    "bulk and outliers": (torch.cat([torch.linspace(0.0, 1.0, DIM - 10, dtype=torch.float64),
                                     torch.linspace(3.0, 12.0, 10, dtype=torch.float64)]), 1e-4),
    "spread over three decades, some negative": (
        10 ** torch.linspace(-2.0, 1.0, DIM, dtype=torch.float64)
        * torch.where(torch.arange(DIM) % 7 == 0, -0.1, 1.0).double(), 1e-3),
}


def rotated(lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A random orthogonal ``Q`` and ``Q diag(λ) Qᵀ``."""
    Q, _ = torch.linalg.qr(torch.randn(lam.numel(), lam.numel(), dtype=torch.float64,
                                       generator=torch.Generator().manual_seed(1)))
    return Q, (Q * lam) @ Q.T


class Reference:
    """Exact densities on a grid of spacing σ/4 reaching 8σ beyond the spectrum."""

    def __init__(self, lam: torch.Tensor, Q: torch.Tensor, sigma2: float, seed: int = SEED) -> None:
        self.width = sigma2 * max(1.0, float(lam.max() - lam.min()))
        sigma = math.sqrt(self.width)
        self.grid = torch.arange(float(lam.min()) - 8 * sigma, float(lam.max()) + 8 * sigma, sigma / 4,
                                 dtype=torch.float64)
        gen = torch.Generator().manual_seed(seed)  # slq_density draws one start vector per run
        starts = torch.stack([torch.randn(DIM, generator=gen, dtype=torch.float64) for _ in range(RUNS)], dim=1)
        seen = (Q.T @ starts) ** 2
        self.run_weights = (seen / seen.sum(dim=0)).T  # (runs, dim): each start's limit measure
        self.lam = lam
        self.exact = self.smooth(lam[None], torch.full((1, DIM), 1.0 / DIM, dtype=torch.float64))
        self.same_starts = self.smooth(lam.expand(RUNS, -1), self.run_weights)

    def smooth(self, nodes: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return gaussian_density(nodes, weights, self.grid, self.width)

    def l1(self, f: torch.Tensor, g: torch.Tensor) -> float:
        return float((f - g).abs().sum()) * float(self.grid[1] - self.grid[0])

    def run_truncation(self, result: DensityResult, i: int) -> float:
        return self.l1(self.smooth(result.nodes[i:i + 1], result.weights[i:i + 1]),
                       self.smooth(self.lam[None], self.run_weights[i:i + 1]))


@pytest.mark.parametrize("name", list(SPECTRA))
def test_adaptive_rule_matches_fixed_steps_at_fewer_products(name: str) -> None:
    lam, sigma2 = SPECTRA[name]
    Q, H = rotated(lam)
    ref = Reference(lam, Q, sigma2)
    sampling = ref.l1(ref.same_starts, ref.exact)
    fixed = slq_density(MatrixOperator(H), 90, RUNS, sigma2=sigma2, seed=SEED)
    adaptive = slq_density(MatrixOperator(H), 90, RUNS, sigma2=sigma2, seed=SEED, tol=TOL)
    # the kernel follows the extreme nodes, which have converged to the extreme eigenvalues
    assert fixed.sigma2 == pytest.approx(ref.width, rel=1e-6) and adaptive.sigma2 == pytest.approx(ref.width, rel=1e-3)
    fixed_error = ref.l1(ref.smooth(fixed.nodes, fixed.weights), ref.exact)
    adaptive_error = ref.l1(ref.smooth(adaptive.nodes, adaptive.weights), ref.exact)
    print(f"{name}: L1 error fixed {fixed_error:.4f} ({fixed.hvps} products), adaptive {adaptive_error:.4f} "
          f"({adaptive.hvps} products), sampling error of {RUNS} starts {sampling:.4f}")
    # 90 steps resolve both spectra at this width: what is left is the sampling error of the starts
    assert ref.l1(ref.smooth(fixed.nodes, fixed.weights), ref.same_starts) < 1e-3
    assert fixed_error <= 1.05 * sampling
    # every run settled, each within tol of its own limit, and the density as good at fewer products
    assert adaptive.settings["settled_runs"] == RUNS and adaptive.settings["tol"] == TOL
    assert max(ref.run_truncation(adaptive, i) for i in range(RUNS)) <= TOL
    assert adaptive_error <= 1.1 * fixed_error
    assert adaptive.hvps == sum(adaptive.settings["run_steps"]) < 0.75 * fixed.hvps
    torch.testing.assert_close(torch.trapezoid(adaptive.density, adaptive.grid),
                               torch.tensor(1.0, dtype=torch.float64), atol=2e-3, rtol=0)


def test_fixed_steps_record_their_steps_and_rule() -> None:
    result = slq_density(MatrixOperator(torch.diag(torch.arange(1.0, 31.0, dtype=torch.float64))), 8, 3, seed=0)
    assert result.settings["run_steps"] == [8, 8, 8] and result.settings["stop"] == "fixed steps"
    assert result.settings["tol"] is None and "settled_runs" not in result.settings and result.hvps == 24


def test_the_lockstep_block_shrinks_as_runs_settle() -> None:
    lam, sigma2 = SPECTRA["bulk and outliers"]
    _, H = rotated(lam)
    widths: list[int] = []

    def product(V: torch.Tensor) -> torch.Tensor:
        widths.append(V.shape[1])
        return H @ V

    result = slq_density(LambdaOperator(product, DIM), 90, RUNS, sigma2=sigma2, seed=SEED, tol=0.003)
    steps = result.settings["run_steps"]
    assert widths[0] == RUNS and widths == sorted(widths, reverse=True) and sum(widths) == result.hvps
    assert len(widths) == max(steps) and min(steps) < max(steps)  # runs left one by one, not together
    assert widths == [sum(s > j for s in steps) for j in range(max(steps))]
    assert all(int((result.weights[i] > 0).sum()) == steps[i] for i in range(RUNS))


def test_a_width_the_steps_cannot_resolve_is_reported() -> None:
    lam, _ = SPECTRA["spread over three decades, some negative"]
    _, H = rotated(lam)
    with pytest.warns(ConvergenceWarning, match="10 of 10 SLQ runs reached num_steps=40"):
        result = slq_density(MatrixOperator(H), 40, RUNS, sigma2=1e-4, seed=SEED, tol=TOL)
    assert result.settings["settled_runs"] == 0 and result.hvps == 400


def test_smoothed_l1_of_two_shifted_gaussians_is_exact() -> None:
    one = torch.ones(1, dtype=torch.float64).numpy()
    for shift, width in ((0.3, 0.01), (1e-3, 4e-2), (5.0, 0.25), (0.1, 1.0), (30.0, 1.0)):
        exact = 2 * math.erf(shift / (2 * math.sqrt(2 * width)))  # ∫|N(0,σ²) − N(δ,σ²)| = 2(2Φ(δ/2σ) − 1)
        got = smoothed_l1((torch.zeros(1, dtype=torch.float64).numpy(), one),
                          (torch.full((1,), shift, dtype=torch.float64).numpy(), one), width)
        assert got == pytest.approx(exact, rel=3e-2)  # the accuracy its docstring states
    same = (torch.tensor([0.0, 1.0], dtype=torch.float64).numpy(), torch.tensor([0.25, 0.75], dtype=torch.float64).numpy())
    assert smoothed_l1(same, same, 1e-4) == 0.0


@pytest.mark.parametrize("tol", [0.0, 1.0, math.nan, -0.1])
def test_a_bad_tol_is_refused_before_any_product(tol: float) -> None:
    op = MatrixOperator(torch.eye(5, dtype=torch.float64))
    with pytest.raises(ConfigError, match="tol"):
        slq_density(op, 5, 2, tol=tol)
    assert op.matvecs == 0


def test_adaptive_runs_on_a_network_hessian_equal_those_on_its_dense_matrix(
        objective: Objective, reference_hessian: torch.Tensor) -> None:
    op = HessianOperator(objective, mode="rev-rev")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        ours = slq_density(op, 40, 4, sigma2=1e-3, seed=0, tol=TOL)
        dense = slq_density(MatrixOperator(reference_hessian), 40, 4, sigma2=1e-3, seed=0, tol=TOL)
    assert ours.settings["run_steps"] == dense.settings["run_steps"] and ours.hvps == dense.hvps
    assert ours.hvps < 4 * min(40, op.dim)
    torch.testing.assert_close(ours.nodes, dense.nodes, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(ours.weights, dense.weights, rtol=1e-6, atol=1e-10)


def test_probe_passes_the_density_tolerance_through() -> None:
    x, y = mlp_data()
    settings = ProbeSettings(density=True, density_steps=100, density_runs=3, density_tol=TOL, batch_size=None)
    density = probe(tiny_mlp(), torch.nn.CrossEntropyLoss(), x, y, settings).density
    assert density is not None and density.settings["tol"] == TOL and density.settings["settled_runs"] == 3
    assert density.hvps == sum(density.settings["run_steps"]) <= 3 * 66  # 66 parameters: at most the whole space
    with pytest.raises(ConfigError, match="density_tol"):
        ProbeSettings(density=True, density_tol=1.0)


@pytest.mark.parametrize("name", list(SPECTRA))
def test_the_density_error_estimates_the_sampling_error_of_the_starts(name: str) -> None:
    lam, sigma2 = SPECTRA[name]
    Q, H = rotated(lam)
    ratios = []
    for seed in range(4):  # 90 steps leave no truncation error (above): the error is the starts' alone
        result = slq_density(MatrixOperator(H), 90, RUNS, sigma2=sigma2, seed=seed)
        ref = Reference(lam, Q, sigma2, seed=seed)
        ratios.append(result.density_error / ref.l1(ref.smooth(result.nodes, result.weights), ref.exact))
    print(f"{name}: estimated / actual L1 sampling error {[round(r, 2) for r in ratios]}")
    assert all(0.5 < r < 1.5 for r in ratios) and 0.7 < sum(ratios) / len(ratios) < 1.2
    one = slq_density(MatrixOperator(H), 5, 1, sigma2=sigma2, seed=0)
    assert one.density_error == math.inf and one.to_dict()["density_error"] == math.inf


def one_lanczos_run(A: torch.Tensor, start: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Textbook Lanczos for one start vector, alone: ``α_j = q_jᵀ A q_j``, ``β_j = ‖r_j‖`` after full
    re-orthogonalisation, stopping when ``β_j ≤ √eps · max|α|`` (an invariant subspace); zero-padded."""
    eps = float(torch.finfo(A.dtype).eps)
    alphas, betas = torch.zeros(steps, dtype=torch.float64), torch.zeros(steps, dtype=torch.float64)
    Q = [start / start.norm()]
    for j in range(steps):
        w = A @ Q[-1]
        alphas[j] = Q[-1] @ w
        basis = torch.stack(Q)
        for _ in range(2):
            w = w - basis.T @ (basis @ w)
        betas[j] = w.norm()
        if j + 1 < steps and betas[j] <= eps ** 0.5 * alphas[: j + 1].abs().max().clamp_min(eps):
            return alphas, betas, j + 1
        Q.append(w / w.norm())
    return alphas, betas, steps


def test_fixed_lockstep_runs_equal_separate_lanczos_runs() -> None:
    """Without ``tol`` the lockstep loop is plain Lanczos run by run, breakdowns included."""
    lam = torch.cat([torch.linspace(0.0, 1.0, 50, dtype=torch.float64), torch.tensor([4.0, 9.0], dtype=torch.float64)])
    _, H = rotated(lam)
    few = torch.diag(torch.tensor([1.0, 2.0, 3.0] * 10, dtype=torch.float64))  # 3 distinct eigenvalues: breakdown
    for A in (H, few):
        starts = torch.randn(A.shape[0], 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        ours = lockstep_tridiagonals(MatrixOperator(A), starts, 20, sigma2=1e-5)
        for i in range(starts.shape[1]):
            alphas, betas, length = one_lanczos_run(A, starts[:, i], 20)
            assert int(ours[2][i]) == length
            torch.testing.assert_close(ours[0][i, :length], alphas[:length], rtol=1e-10, atol=1e-10)
            torch.testing.assert_close(ours[1][i, :length], betas[:length], rtol=1e-10, atol=1e-10)
            assert not ours[0][i, length:].any() and not ours[1][i, length:].any()  # zero-padded after a breakdown
    assert ours[2].tolist() == [3, 3, 3, 3] and ours[3].all()  # exact after 3 steps, counted as settled
