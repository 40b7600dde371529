"""Spectral densities from stochastic Lanczos quadrature, on a log scale (Ghorbani et al. 2019).

The density is ``φ(t) = (1/R) Σ_r Σ_j τ_rj N(t; θ_rj, σ²)`` (SLQ nodes θ, weights τ, R runs;
:func:`sharpscope.curvature.results.gaussian_density`). A
:class:`~sharpscope.curvature.DensityResult` is plotted on its own grid; its ``to_dict()`` (or the
JSON of ``sharpscope probe --density --json``, whose ``"density"`` entry it is) holds only nodes,
weights and σ², so the density is re-smoothed on the grid ``slq_density`` uses: the extreme nodes
± max(0.01, 1% of their range), ``settings["grid_size"]`` points (1000 by default).

On the log scale the outliers that dominate λ_max stay visible next to the bulk near zero; values
below :data:`LOG_FLOOR` × the peak are out of view (the Gaussian tails reach 0).
:func:`draw_density` draws the figure from :func:`density_data`'s plotted numbers alone (a figure's JSON).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from sharpscope.curvature import DensityResult
from sharpscope.curvature.results import gaussian_density
from sharpscope.errors import ConfigError, DataError
from sharpscope.io import jsonsafe
from sharpscope.plots.style import color, label_axes, legend, new_figure

DensityLike = DensityResult | Mapping[str, Any]
LOG_FLOOR = 1e-8


def _unwrap(result: Mapping[str, Any]) -> Mapping[str, Any]:
    """The density dict itself, from a ``DensityResult.to_dict()`` or a probe report's JSON."""
    if "nodes" in result:
        return result
    if "density" in result:
        inner = result["density"]
        if inner is None:
            raise DataError("the probe report holds no density (run sharpscope probe with --density)")
        if isinstance(inner, Mapping):
            return _unwrap(inner)
    raise DataError(f"not a spectral density: expected 'nodes', 'weights' and 'sigma2', got keys {sorted(result)}")


def _array(d: Mapping[str, Any], key: str) -> np.ndarray:
    try:
        out = np.array(_floats(d[key]), dtype=np.float64)
    except KeyError:
        raise DataError(f"spectral density without {key!r}") from None
    except (TypeError, ValueError):
        raise DataError(f"spectral density: {key!r} is not a table of numbers") from None
    return np.atleast_2d(out)


def _floats(obj: Any) -> Any:
    """Nested lists with stored non-finite strings (``"NaN"``, ``"Infinity"``) as floats."""
    if isinstance(obj, list):
        return [_floats(v) for v in obj]
    return jsonsafe.as_float(obj)


def _number(d: Mapping[str, Any], key: str) -> float:
    """``d[key]`` as a float (NaN when absent or not a number)."""
    try:
        return jsonsafe.as_float(d.get(key, math.nan))
    except (TypeError, ValueError):
        return math.nan


def density_curve(result: DensityLike) -> dict[str, Any]:
    """``{"grid", "density", "sigma2", "trace", "trace_stderr"}`` of one result (see the module docstring)."""
    if isinstance(result, DensityResult):
        return {"grid": result.grid.double().numpy(), "density": result.density.double().numpy(),
                "sigma2": result.sigma2, "trace": result.trace, "trace_stderr": result.trace_stderr}
    if not isinstance(result, Mapping):
        raise DataError(f"density_figure needs DensityResult objects or their dicts, got {type(result).__name__}")
    d = _unwrap(result)
    nodes, weights = _array(d, "nodes"), _array(d, "weights")
    if nodes.shape != weights.shape:
        raise DataError(f"spectral density: nodes {nodes.shape} and weights {weights.shape} differ in shape")
    used = weights > 0
    if not used.any() or not np.isfinite(nodes[used]).all():
        raise DataError("spectral density: no finite quadrature nodes with positive weight")
    sigma2 = _number(d, "sigma2")
    if not (math.isfinite(sigma2) and sigma2 > 0):
        raise DataError(f"spectral density: sigma2 must be a positive number, got {d.get('sigma2')!r}")
    size = int((d.get("settings") or {}).get("grid_size") or 1000)
    lo, hi = float(nodes[used].min()), float(nodes[used].max())
    pad = max(0.01, 0.01 * (hi - lo))
    grid = torch.linspace(lo - pad, hi + pad, size, dtype=torch.float64)
    density = gaussian_density(torch.from_numpy(nodes), torch.from_numpy(weights), grid, sigma2)
    return {"grid": grid.numpy(), "density": density.numpy(), "sigma2": sigma2,
            "trace": _number(d, "trace"), "trace_stderr": _number(d, "trace_stderr")}


def load_density(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The density dict stored in a JSON file: ``sharpscope probe --density --json`` output or a
    saved ``DensityResult.to_dict()``."""
    path = Path(path)
    try:
        obj = jsonsafe.read_json_object(path, jsonsafe.loads)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path} is a folder, not a density JSON file (sharpscope probe --density --json)") from None
    try:
        return dict(_unwrap(obj))
    except DataError as e:
        raise DataError(f"{path}: {e}") from None


def _labels(n: int, labels: Sequence[str] | None) -> list[str]:
    if labels is None:
        return ["SLQ density"] if n == 1 else [f"density {i + 1}" for i in range(n)]
    if len(labels) != n:
        raise ConfigError(f"{len(labels)} label(s) for {n} densit{'y' if n == 1 else 'ies'}; give one label each")
    return [str(x) for x in labels]


def density_data(results: DensityLike | Sequence[DensityLike], *, labels: Sequence[str] | None = None,
                 log: bool = True) -> dict[str, Any]:
    """What :func:`density_figure` plots: per result ``label``, ``grid``, ``density``, ``sigma2``,
    ``trace``, ``trace_stderr``."""
    items = [results] if isinstance(results, (DensityResult, Mapping)) else list(results)
    if not items:
        raise DataError("no spectral densities to plot")
    names = _labels(len(items), labels)
    curves = [{"label": name, **density_curve(r)} for name, r in zip(names, items)]
    return {"figure": "density", "log": log, "results": curves}


def density_figure(results: DensityLike | Sequence[DensityLike], *, labels: Sequence[str] | None = None,
                   log: bool = True) -> Figure:
    """Eigenvalue density against λ, one line per result (gid ``density``), on a log y-scale
    unless ``log=False``; the legend gives each SLQ trace estimate ± its standard error."""
    return draw_density(density_data(results, labels=labels, log=log))


def draw_density(data: Mapping[str, Any]) -> Figure:
    """The figure of :func:`density_data`'s plotted numbers (each curve as stored, the log scale as recorded)."""
    log = bool(data.get("log", True))
    fig, (ax,) = new_figure(1)
    peak = 0.0
    for i, item in enumerate(data["results"]):
        trace, stderr = _number(item, "trace"), _number(item, "trace_stderr")
        tr = f"tr ≈ {trace:.4g} ± {stderr:.2g}" if math.isfinite(trace) else ""
        density = np.asarray(_floats(list(item["density"])), dtype=np.float64)
        (line,) = ax.plot(np.asarray(_floats(list(item["grid"])), dtype=np.float64), density, color=color(i),
                          linewidth=1.2, label=f"{item['label']} ({tr})" if tr else item["label"])
        line.set_gid("density")
        peak = max(peak, float(np.nanmax(density)))
    if log and peak > 0:
        ax.set_yscale("log", nonpositive="mask")
        ax.set_ylim(bottom=peak * LOG_FLOOR, top=peak * 3)
    label_axes(ax, "eigenvalue λ", "density (log scale)" if log else "density")
    legend(ax)
    return fig
