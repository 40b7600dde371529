"""Typed results: every estimate carries its uncertainty, its cost in HVPs and seconds, and its settings."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sharpscope.errors import ConfigError


def float_list(values: Tensor | np.ndarray | list[float]) -> list[float]:
    """The entries of a one-dimensional tensor, array or list as Python floats (JSON-ready)."""
    return [float(v) for v in (values.tolist() if hasattr(values, "tolist") else values)]


@dataclass(frozen=True)
class EigenResult:
    """Eigenvalues from a Krylov or power method.

    ``residuals[i] = ‖H y_i − θ_i y_i‖ / |θ_i|`` for the unit Ritz vector ``y_i``; the eigenvalue
    error is at most that residual times ``|θ_i|`` and, for a well-separated eigenvalue, about its
    square. ``error_bounds[i]`` (Lanczos) estimates a bound on ``|λ_i − θ_i|`` in the eigenvalue's
    own units: ``min(r, r²/δ)`` with ``r`` the absolute residual and ``δ`` the gap to the other Ritz
    values. ``eigenvectors`` holds ``y_i`` as columns, shape ``(dim, k)``.
    """

    eigenvalues: Tensor
    eigenvectors: Tensor | None
    residuals: Tensor
    hvps: int
    seconds: float
    converged: bool
    settings: dict[str, object] = field(default_factory=dict)
    error_bounds: Tensor | None = None

    def estimates(self) -> dict[str, Any]:
        """JSON-ready eigenvalues, residuals, error bounds, convergence and cost (eigenvectors and settings
        left out)."""
        bounds = None if self.error_bounds is None else float_list(self.error_bounds)
        return {"eigenvalues": float_list(self.eigenvalues), "residuals": float_list(self.residuals),
                "error_bounds": bounds, "converged": self.converged, "hvps": self.hvps, "seconds": self.seconds}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: :meth:`estimates` and the settings (eigenvectors left out)."""
        return {**self.estimates(), "settings": self.settings}


@dataclass(frozen=True)
class TraceResult:
    """A stochastic trace estimate ``estimate ± stderr`` and the per-probe samples behind it."""

    estimate: float
    stderr: float
    samples: Tensor
    hvps: int
    seconds: float
    settings: dict[str, object] = field(default_factory=dict)

    @property
    def relative_stderr(self) -> float:
        """``stderr / |estimate|`` (∞ for a zero estimate)."""
        return self.stderr / abs(self.estimate) if self.estimate != 0 else math.inf

    def to_dict(self) -> dict[str, object]:
        """JSON-ready summary: estimate ± stderr, the number of probes and the cost (samples left out)."""
        return {"estimate": self.estimate, "stderr": self.stderr, "num_samples": int(self.samples.numel()),
                "hvps": self.hvps, "seconds": self.seconds, "settings": self.settings}


def gaussian_density(nodes: Tensor, weights: Tensor, grid: Tensor, sigma2: float) -> Tensor:
    """``φ(t) = (1/R) Σ_r Σ_j τ_rj N(t; θ_rj, σ²)``, the Gaussian-smoothed quadrature measure."""
    diff = grid[:, None, None] - nodes[None]
    kernel = torch.exp(-0.5 * diff**2 / sigma2) / math.sqrt(2 * math.pi * sigma2)
    return (kernel * weights[None]).sum((1, 2)) / nodes.shape[0]


@dataclass(frozen=True)
class DensityResult:
    """Stochastic Lanczos quadrature: per-run nodes ``θ_rj`` and weights ``τ_rj`` (each run's sum to 1),
    the raw tridiagonals, and a density smoothed on ``grid``.

    ``trace`` is ``dim · mean_r Σ_j τ_rj θ_rj`` with the standard error over runs. ``density_error``
    estimates the L1 sampling error of ``density`` over the random starts (``∫|φ̂ − φ| dt``, the
    densities integrating to 1); the steps each run took and the stopping rule are in ``settings``.
    """

    nodes: Tensor
    weights: Tensor
    alphas: Tensor
    betas: Tensor
    grid: Tensor
    density: Tensor
    sigma2: float
    trace: float
    trace_stderr: float
    hvps: int
    seconds: float
    settings: dict[str, object] = field(default_factory=dict)
    density_error: float = math.nan

    def smooth(self, sigma2: float, grid: Tensor | None = None) -> Tensor:
        """Re-smooth the same quadrature nodes with another kernel width (no new HVPs)."""
        return gaussian_density(self.nodes, self.weights, self.grid if grid is None else grid, sigma2)

    def histogram(self, bins: int = 12) -> tuple[Tensor, Tensor]:
        """``(edges, mass)``: the quadrature measure's mass in ``bins`` equal bins between the extreme
        nodes, ``mass_k = (1/R) Σ_r Σ_j τ_rj [θ_rj in bin k]`` (an estimate of the fraction of
        eigenvalues in each bin; the masses sum to 1). No smoothing, no new HVPs."""
        if bins < 1:
            raise ConfigError(f"bins must be positive, got {bins}")
        nodes, weights = self.nodes.double().reshape(-1), self.weights.double().reshape(-1)
        nodes, weights = nodes[weights > 0], weights[weights > 0]  # runs that stopped early are padded
        lo, hi = float(nodes.min()), float(nodes.max())
        if hi <= lo:
            hi = lo + max(1e-12, abs(lo) * 1e-12)
        edges = torch.linspace(lo, hi, bins + 1, dtype=torch.float64)
        index = torch.bucketize(nodes, edges[1:-1], right=True)  # nodes equal to the top edge fall in the last bin
        mass = torch.zeros(bins, dtype=torch.float64).index_add_(0, index, weights) / self.nodes.shape[0]
        return edges, mass

    def to_dict(self) -> dict[str, object]:
        """JSON-ready summary: quadrature nodes and weights, σ², trace ± stderr, density error and cost
        (the Lanczos coefficients and the smoothed density on the grid left out)."""
        return {"nodes": self.nodes.tolist(), "weights": self.weights.tolist(), "sigma2": self.sigma2,
                "trace": self.trace, "trace_stderr": self.trace_stderr, "density_error": self.density_error,
                "hvps": self.hvps,
                "seconds": self.seconds, "settings": self.settings}
