"""Per-layer curvature as bar charts: the top eigenvalue and the trace of each layer's Hessian block.

Reads a :class:`~sharpscope.curvature.PerLayerCurvature`, its ``to_dict()``, or the JSON of
``sharpscope probe --per-layer --json`` (whose ``"per_layer"`` entry it is). Bars are horizontal,
layers top to bottom in model order; traces carry ± one standard error. Each bar is the diagonal
block ``H_ℓℓ`` (cross-layer terms excluded), so the λ_max bars are each at most the network's λ_max.
A probe report's whole-network λ_max and trace are drawn as dashed lines. With ``log=True`` the value
axis is logarithmic (the shared tick labels of :func:`~sharpscope.plots.style.log_axis`), or symmetric-logarithmic (linear within the
smallest non-zero magnitude) when a value is zero or negative.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from sharpscope.curvature import PerLayerCurvature
from sharpscope.errors import DataError
from sharpscope.plots.style import FONT_SIZE, PANEL_SIZE, color, label_axes, log_axis, new_figure

PerLayerLike = PerLayerCurvature | Mapping[str, Any]


def _layers(result: PerLayerLike) -> list[Mapping[str, Any]]:
    """The rows, from a result, its ``to_dict()`` or a probe report's JSON."""
    d: Mapping[str, Any] = result.to_dict() if isinstance(result, PerLayerCurvature) else result
    if "layers" not in d and isinstance(d.get("per_layer"), Mapping):
        d = d["per_layer"]
    layers = d.get("layers")
    if not isinstance(layers, Sequence) or not layers:
        raise DataError("no per-layer curvature to plot: expected a 'layers' list "
                        "(run sharpscope probe with --per-layer)")
    return list(layers)


def _set_scale(ax: Axes, values: np.ndarray) -> None:
    finite = values[np.isfinite(values)]
    if finite.size and (finite > 0).all():
        ax.set_xscale("log")
        ax.set_xlim(left=10 ** (np.floor(np.log10(finite.min())) - 1))  # a decade below the smallest bar
        log_axis(ax, "x")
    else:
        nonzero = np.abs(finite[finite != 0])
        ax.set_xscale("symlog", linthresh=float(nonzero.min()) if nonzero.size else 1.0)


def layer_curvature_figure(result: PerLayerLike, *, log: bool = False, title: str | None = None) -> Figure:
    """Bars of λ_max per layer and, when traces were measured, of tr(H_ℓℓ) ± stderr beside them."""
    layers = _layers(result)
    try:
        names = [str(layer["name"]) for layer in layers]
        top = np.array([float(layer["eigenvalues"][0]) for layer in layers])
    except (KeyError, IndexError, TypeError, ValueError):
        raise DataError("per-layer rows need a 'name' and a list of 'eigenvalues'") from None
    traces = [layer.get("trace") for layer in layers]
    has_trace = any(isinstance(t, Mapping) for t in traces)
    fig, axes = new_figure(1, 2 if has_trace else 1)
    fig.set_size_inches(fig.get_size_inches()[0], max(PANEL_SIZE[1], 0.8 + 0.22 * len(layers)))
    y = np.arange(len(layers))
    axes[0].barh(y, top, color=color(0))
    label_axes(axes[0], "λ_max of the layer's Hessian block", "")
    if title:
        fig.suptitle(title, fontsize=FONT_SIZE)
    panels = [(axes[0], top)]
    if has_trace:
        est = np.array([float(t["estimate"]) if isinstance(t, Mapping) else np.nan for t in traces])
        err = np.array([float(t["stderr"]) if isinstance(t, Mapping) else 0.0 for t in traces])
        axes[1].barh(y, est, xerr=np.where(np.isfinite(err), err, 0.0), color=color(1), error_kw={"linewidth": 0.8})
        label_axes(axes[1], "trace of the layer's Hessian block (± stderr)", "")
        panels.append((axes[1], est))
    whole = _network(result)
    for i, (ax, values) in enumerate(panels):
        ax.set_yticks(y, names if i == 0 else [""] * len(names))
        ax.invert_yaxis()
        line = whole[i] if i < len(whole) else None
        if line is not None:
            ax.axvline(line[0], color="0.2", lw=1.2, ls="--", label=line[1])
            ax.legend(fontsize=FONT_SIZE - 1, loc="lower right")
        if log:
            _set_scale(ax, values if line is None else np.append(values, line[0]))
    return fig


def _network(result: PerLayerLike) -> list[tuple[float, str] | None]:
    """The whole network's λ_max and tr(H), when ``result`` is a probe report that holds them: each block's
    λ_max is at most the network's, and the block traces sum to the network's trace."""
    if not isinstance(result, Mapping):
        return []
    out: list[tuple[float, str] | None] = []
    eig = result.get("eigenvalues")
    out.append((float(eig[0]), f"whole network λ_max = {float(eig[0]):.4g}")
               if isinstance(eig, Sequence) and eig and isinstance(eig[0], (int, float)) else None)
    tr = result.get("trace")
    out.append((float(tr["estimate"]), f"whole network tr(H) = {float(tr['estimate']):.4g} ± {float(tr['stderr']):.2g}")
               if isinstance(tr, Mapping) and isinstance(tr.get("estimate"), (int, float)) else None)
    return out
