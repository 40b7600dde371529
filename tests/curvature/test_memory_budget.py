"""Algorithms within a memory budget: restarted Lanczos, chunked and locally re-orthogonalised SLQ,
streamed trace estimators, against dense float64 answers; and guard Ritz values on a close pair."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

from sharpscope import ConfigError, LambdaOperator, MatrixOperator, hutchinson, hutchpp, lanczos
from sharpscope.curvature import CurvatureSettings, slq_density
from sharpscope.curvature.algorithms.krylov_basis import KrylovBasis
from sharpscope.curvature.algorithms.ritz import ConvergenceWarning
from sharpscope.curvature.memory import parse_budget, resolve_budget
from tests.curvature.test_lanczos_stopping import spectrum as bulk_with
from tests.curvature.test_lanczos_stopping import with_spectrum


# ----------------------------------------------------------------------------- budgets
def test_budget_specs_resolve_to_vectors() -> None:
    cpu = torch.device("cpu")
    assert resolve_budget("12 vectors", 1000, torch.float64, cpu).vectors == 12
    assert resolve_budget("12v", 1000, torch.float32, cpu).vectors == 12
    assert resolve_budget(80_000, 1000, torch.float64, cpu).vectors == 10
    assert resolve_budget("1MiB", 1024, torch.float32, cpu).vectors == 256
    assert resolve_budget("2e6B", 1000, torch.float64, cpu).vectors == 250
    default = resolve_budget(None, 1000, torch.float64, cpu)
    assert default.rule.startswith("50% of the") and (default.vectors is None or default.vectors > 0)
    for bad in ("12 apples", "-3 vectors", "1.5 vectors", 0, True, 2.5, "0.1B"):
        with pytest.raises(ConfigError, match="memory_budget"):
            parse_budget(bad)
    with pytest.raises(ConfigError, match="memory_budget"):
        CurvatureSettings(memory_budget="lots")
    with pytest.raises(ConfigError, match="guards"):
        CurvatureSettings(guards=-1)
    with pytest.raises(ConfigError, match="basis_location"):
        CurvatureSettings(basis_location="disk")  # type: ignore[arg-type]


def test_krylov_basis_restarts_in_place_like_a_dense_product() -> None:
    gen = torch.Generator().manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(40, 9, dtype=torch.float64, generator=gen))
    basis = KrylovBasis(40, torch.float64, torch.device("cpu"), chunk=4)
    for j in range(9):
        basis.append(Q[:, j])
    S, _ = torch.linalg.qr(torch.randn(9, 3, dtype=torch.float64, generator=gen))
    basis.restart(S)
    assert basis.size == 3 and basis.allocated == 12  # no new chunk: compressed in place
    torch.testing.assert_close(basis.columns(0, 3), Q @ S, rtol=0, atol=1e-13)
    basis.append(torch.zeros(40, dtype=torch.float64))  # the next vector goes after the kept ones
    assert basis.size == 4 and float(basis.vector(3).abs().sum()) == 0.0


# ----------------------------------------------------------------------------- restarted Lanczos
SPECTRA = {
    "separated": [10.0, 7.0, 5.0, 4.0],
    "clustered": [10.0, 9.99, 9.98, 9.0],
    "close pair": [10.0, 9.9],
}


@pytest.mark.parametrize("name", SPECTRA)
@pytest.mark.parametrize("budget", ["13 vectors", "15 vectors"])
def test_restarted_lanczos_matches_the_dense_eigendecomposition(name: str, budget: str) -> None:
    lam = bulk_with(SPECTRA[name])
    A = with_spectrum(lam, seed=1)
    exact = torch.sort(lam, descending=True).values
    k = 3 if len(SPECTRA[name]) >= 3 else 2
    res = lanczos(MatrixOperator(A), k=k, tol=1e-9, max_iter=2000, seed=2, memory_budget=budget)
    memory = res.settings["memory"]
    assert res.converged and memory["strategy"] == "thick restart" and memory["thick_restarts"] >= 1
    assert memory["peak_vector_bytes"] <= memory["budget_bytes"]
    torch.testing.assert_close(res.eigenvalues, exact[:k], rtol=0, atol=1e-7)
    Y = res.eigenvectors
    true = (A @ Y - Y * res.eigenvalues).norm(dim=0) / res.eigenvalues.abs()
    assert bool((true < 1e-8).all())  # the reported residuals hold for the returned vectors
    torch.testing.assert_close(res.residuals, true, rtol=1e-3, atol=1e-12)


def test_restarted_lanczos_on_a_repeated_eigenvalue_reports_only_eigenvalues() -> None:
    """Single-vector Lanczos sees one copy of a repeated eigenvalue; a restarted run may pick up a
    second copy from rounding. Either way every reported value is an eigenvalue within its bound."""
    lam = bulk_with([10.0, 10.0, 10.0, 8.0, 6.0])
    A = with_spectrum(lam, seed=4)
    full = lanczos(MatrixOperator(A), k=3, tol=1e-10, max_iter=300, seed=0)
    restarted = lanczos(MatrixOperator(A), k=3, tol=1e-10, max_iter=2000, seed=0, memory_budget="15 vectors")
    assert full.settings["memory"]["strategy"] == "full basis" and full.converged
    assert restarted.settings["memory"]["strategy"] == "thick restart" and restarted.converged
    for res in (full, restarted):
        assert abs(float(res.eigenvalues[0]) - 10.0) < 1e-9
        distance = (res.eigenvalues[:, None] - lam[None]).abs().min(dim=1).values
        assert bool((distance <= res.error_bounds + 1e-12).all()), (res.eigenvalues, res.error_bounds)
        assert bool((res.eigenvalues[1:] <= res.eigenvalues[:-1]).all())


def test_a_budget_below_every_strategy_is_refused_before_any_product() -> None:
    calls: list[int] = []
    op = LambdaOperator(lambda V: calls.append(1) or V, 10_000)
    with pytest.raises(ConfigError, match=r"needs at least 8 vectors .* in any strategy; the memory budget allows 6"):
        lanczos(op, k=1, memory_budget="6 vectors")  # 3 working vectors, 1 Ritz vector, 4 basis vectors
    assert not calls
    res = lanczos(op, k=1, memory_budget="8 vectors")
    assert res.settings["memory"]["strategy"] == "thick restart" and calls


def test_the_full_basis_is_used_when_it_fits_and_matches_the_unbudgeted_run() -> None:
    A = with_spectrum(bulk_with([10.0, 7.0]), seed=3)
    plain = lanczos(MatrixOperator(A), k=1, tol=1e-8, seed=0)
    budgeted = lanczos(MatrixOperator(A), k=1, tol=1e-8, seed=0, memory_budget="200 vectors")
    assert budgeted.settings["memory"]["strategy"] == "full basis"
    assert budgeted.settings["steps"] == plain.settings["steps"]
    torch.testing.assert_close(budgeted.eigenvalues, plain.eigenvalues, rtol=0, atol=0)


def test_a_host_basis_gives_the_same_numbers() -> None:
    A = with_spectrum(bulk_with([10.0, 7.0, 5.0]), seed=3)
    device = lanczos(MatrixOperator(A), k=2, tol=1e-9, seed=0, memory_budget="12 vectors")
    host = lanczos(MatrixOperator(A), k=2, tol=1e-9, seed=0, memory_budget="12 vectors", basis="host")
    assert host.settings["memory"]["basis"] == "host"
    torch.testing.assert_close(host.eigenvalues, device.eigenvalues, rtol=0, atol=0)


def test_peak_resident_memory_stays_within_the_budget() -> None:
    """An independent measurement: the process' peak resident memory while a restarted run works on
    vectors of 40 MB (above the allocator's largest mmap threshold, so freed vectors leave the
    resident set at once), where the full basis would need 4 GB."""
    script = textwrap.dedent("""
        import json, resource, warnings, torch
        from sharpscope import LambdaOperator, lanczos
        torch.set_num_threads(1)
        dim = 5_000_000
        d = torch.linspace(0.0, 1.0, dim, dtype=torch.float64)
        d[-1], d[-2] = 10.0, 9.0
        op = LambdaOperator(lambda V: d[:, None] * V, dim)
        # load what is imported lazily (scipy.linalg for the tridiagonal, the restart path) beforehand
        small = torch.linspace(1.0, 2.0, 60, dtype=torch.float64)
        lanczos(LambdaOperator(lambda V: small[:, None] * V, 60), k=1, memory_budget="8 vectors", tol=1e-10)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = lanczos(op, k=1, tol=1e-6, seed=0, memory_budget="12 vectors")
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(json.dumps({"grew": after - before, "memory": res.settings["memory"],
                          "value": float(res.eigenvalues[0])}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    vector = 5_000_000 * 8
    assert out["memory"]["strategy"] == "thick restart"
    assert out["memory"]["peak_vector_bytes"] <= out["memory"]["budget_bytes"] == 12 * vector
    assert out["grew"] <= 12.5 * vector, out  # the budget counts the operator's output as a working vector
    assert abs(out["value"] - 10.0) < 1e-5


# ----------------------------------------------------------------------------- guards
def close_pair_case(seed: int, component: float, pair: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """A bulk on [0, 1] under a close pair, and a start vector with relative weight ``component`` on
    the top eigenvector."""
    n = 300
    gen = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, generator=gen))
    lam = bulk_with(list(pair), n)
    c = torch.randn(n, dtype=torch.float64, generator=gen)
    c[-1] = component * c.norm()
    return (Q * lam) @ Q.T, Q @ c


@pytest.mark.parametrize("pair", [(10.0, 9.9), (10.0, 9.99)])
@pytest.mark.parametrize("component", [1e-6, 1e-12])
def test_a_guard_keeps_the_neighbour_from_passing_for_the_extreme_eigenvalue(
        pair: tuple[float, float], component: float) -> None:
    for seed in range(3):
        A, v0 = close_pair_case(seed, component, pair)
        plain = lanczos(MatrixOperator(A), k=1, tol=1e-3, v0=v0, guards=0, seed=seed)
        # the failure the guard prevents: the neighbour converges first and passes the residual test
        assert plain.converged and abs(float(plain.eigenvalues[0]) - pair[1]) < 1e-3
        guarded = lanczos(MatrixOperator(A), k=1, tol=1e-3, v0=v0, seed=seed)
        assert guarded.converged and guarded.settings["guards"] == 1
        assert abs(float(guarded.eigenvalues[0]) - pair[0]) <= float(guarded.error_bounds[0])
        assert guarded.settings["guard_measure"][0] < 1e-2


def test_the_most_negative_eigenvalue_is_guarded_too() -> None:
    A, v0 = close_pair_case(0, 1e-9, (10.0, 9.9))
    res = lanczos(MatrixOperator(-A), k=1, which="SA", tol=1e-3, v0=v0, seed=0)
    assert abs(float(res.eigenvalues[0]) + 10.0) <= float(res.error_bounds[0])


def test_an_unlocated_guard_is_named_in_the_convergence_warning() -> None:
    A = with_spectrum(bulk_with([10.0]), seed=0)
    with pytest.warns(ConvergenceWarning, match="wanted and guard Ritz pairs"):
        res = lanczos(MatrixOperator(A), k=1, tol=1e-3, max_iter=3, seed=0)
    assert not res.converged


# ----------------------------------------------------------------------------- SLQ and traces
def test_slq_chunks_that_fit_give_the_unchunked_numbers() -> None:
    A = with_spectrum(bulk_with([10.0, 7.0], n=200), seed=2)
    whole = slq_density(MatrixOperator(A), num_steps=30, num_runs=6, seed=0)
    chunked = slq_density(MatrixOperator(A), num_steps=30, num_runs=6, seed=0, memory_budget="70 vectors")
    assert whole.settings["memory"]["run_block"] == 6 and chunked.settings["memory"]["run_block"] == 2
    assert chunked.settings["memory"]["peak_vector_bytes"] <= chunked.settings["memory"]["budget_bytes"]
    torch.testing.assert_close(chunked.nodes, whole.nodes, rtol=0, atol=1e-12)
    torch.testing.assert_close(chunked.weights, whole.weights, rtol=0, atol=1e-12)


def test_local_reorthogonalisation_keeps_the_density_close_to_the_full_one() -> None:
    lam = bulk_with([10.0, 7.0, 5.0], n=400)
    A = with_spectrum(lam, seed=5)
    full = slq_density(MatrixOperator(A), num_steps=80, num_runs=4, seed=0, reorthogonalize="full")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning: local re-orthogonalisation is a chosen strategy
        local = slq_density(MatrixOperator(A), num_steps=80, num_runs=4, seed=0, memory_budget="10 vectors")
    assert local.settings["reorthogonalize"] == "local" and local.settings["memory"]["run_block"] == 2
    # the same start vectors: the difference is the loss of orthogonality alone
    grid, width = full.grid, full.sigma2
    l1 = float(torch.trapezoid((local.smooth(width, grid) - full.density).abs(), grid))
    assert l1 < 0.05, l1
    assert abs(local.trace - full.trace) < 0.02 * abs(float(lam.sum()))
    with pytest.raises(ConfigError, match="full re-orthogonalisation"):
        slq_density(MatrixOperator(A), num_steps=80, num_runs=4, seed=0, memory_budget="10 vectors",
                    reorthogonalize="full")


def test_hutchpp_shrinks_its_sketch_to_the_budget_and_stays_exact_on_low_rank() -> None:
    gen = torch.Generator().manual_seed(0)
    U, _ = torch.linalg.qr(torch.randn(500, 3, dtype=torch.float64, generator=gen))
    A = (U * torch.tensor([5.0, 3.0, 2.0], dtype=torch.float64)) @ U.T  # rank 3, trace 10
    free = hutchpp(MatrixOperator(A), 60, seed=0)
    tight = hutchpp(MatrixOperator(A), 60, seed=0, block_size=2, memory_budget="16 vectors")
    assert free.settings["sketch_size"] == 20 and tight.settings["sketch_size"] == 4
    assert tight.settings["sketch_rule"].startswith("shrunk") and tight.hvps == 60
    assert tight.settings["memory"]["peak_vector_bytes"] <= tight.settings["memory"]["budget_bytes"]
    assert math.isclose(tight.estimate, 10.0, rel_tol=1e-10) and math.isclose(free.estimate, 10.0, rel_tol=1e-10)


def test_hutchinson_streams_within_a_small_budget() -> None:
    A = with_spectrum(bulk_with([10.0], n=100), seed=0)
    big = hutchinson(MatrixOperator(A), 40, seed=0)
    small = hutchinson(MatrixOperator(A), 40, seed=0, memory_budget="8 vectors")
    assert big.settings["memory"]["block_size"] == 8 and small.settings["memory"]["block_size"] == 2
    assert small.settings["memory"]["peak_vector_bytes"] <= small.settings["memory"]["budget_bytes"]
    assert small.hvps == 40 and small.samples.numel() == 40
    with pytest.raises(ConfigError, match="memory budget allows 1"):
        hutchinson(MatrixOperator(A), 40, seed=0, memory_budget="1 vector")


# ----------------------------------------------------------------------------- symmetry
def test_a_non_symmetric_operator_is_refused_and_a_symmetric_one_records_its_gap() -> None:
    gen = torch.Generator().manual_seed(0)
    B = torch.randn(60, 60, dtype=torch.float64, generator=gen)
    calls: list[int] = []
    op = LambdaOperator(lambda V: calls.append(V.shape[1]) or B @ V, 60)
    with pytest.raises(ConfigError, match="not symmetric"):
        lanczos(op, k=1, seed=0)
    assert sum(calls) == 2  # refused after two products, the ones the test needs
    A = with_spectrum(bulk_with([10.0], n=60), seed=0)
    res = lanczos(MatrixOperator(A), k=1, seed=0)
    assert res.settings["symmetry_gap"] is not None and res.settings["symmetry_gap"] < 1e-12
    # a small asymmetry (rounding-sized) passes
    E = 1e-9 * torch.randn(60, 60, dtype=torch.float64, generator=gen)
    assert lanczos(MatrixOperator(A + E), k=1, seed=0).settings["symmetry_gap"] < 1e-6
