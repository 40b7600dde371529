"""Figures from run directories and curvature results (matplotlib, no pyplot state).

Every figure function returns a :class:`matplotlib.figure.Figure` and has a ``*_data`` twin with
the plotted numbers; :func:`save_figure` writes the figure as PNG and PDF with those numbers (and
the command that made it) beside it as JSON.

* trajectories (:mod:`~sharpscope.plots.trajectory`): sharpness against step with the stability
  thresholds, trace against test accuracy with the rank correlation, escape curves;
* spectra (:mod:`~sharpscope.plots.density`): SLQ densities on a log scale;
* geometry (:mod:`~sharpscope.plots.landscape`, :mod:`~sharpscope.plots.layers`): loss slices and
  per-layer curvature.
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what the names below resolve to, for type checkers (nothing is imported at run time)
    from sharpscope.plots.density import density_data, density_figure, draw_density, load_density
    from sharpscope.plots.kinds import auto_kind, draw_from_data, make_figure
    from sharpscope.plots.landscape import (
        contour_figure,
        draw_slice,
        landscape_data,
        line_figure,
        slice_from_data,
        surface_figure,
    )
    from sharpscope.plots.layers import layer_curvature_figure
    from sharpscope.plots.runs import RunData, load_run, series
    from sharpscope.plots.save import load_figure_data, save_figure
    from sharpscope.plots.trajectory import (
        escape_data,
        escape_figure,
        sharpness_data,
        sharpness_figure,
        spearman,
        trace_accuracy_data,
        trace_accuracy_figure,
    )

# Names resolve on first use (PEP 562), so importing one submodule (e.g. ``kinds`` for the CLI's help
# text) does not load matplotlib.
_SOURCES = {
    "density_data": "density", "density_figure": "density", "draw_density": "density", "load_density": "density",
    "auto_kind": "kinds", "draw_from_data": "kinds", "make_figure": "kinds",
    "contour_figure": "landscape", "draw_slice": "landscape", "landscape_data": "landscape", "line_figure": "landscape",
    "slice_from_data": "landscape",
    "surface_figure": "landscape", "layer_curvature_figure": "layers",
    "RunData": "runs", "load_run": "runs", "series": "runs", "load_figure_data": "save", "save_figure": "save",
    "escape_data": "trajectory", "escape_figure": "trajectory", "sharpness_data": "trajectory",
    "sharpness_figure": "trajectory", "spearman": "trajectory", "trace_accuracy_data": "trajectory",
    "trace_accuracy_figure": "trajectory",
}


def __getattr__(name: str) -> Any:
    if name in _SOURCES:
        return getattr(importlib.import_module(f"sharpscope.plots.{_SOURCES[name]}"), name)
    raise AttributeError(f"module 'sharpscope.plots' has no attribute {name!r}")


__all__ = [
    "RunData", "auto_kind", "contour_figure", "density_data", "density_figure", "draw_density", "draw_from_data",
    "draw_slice", "escape_data", "escape_figure", "landscape_data", "layer_curvature_figure", "line_figure",
    "load_density", "load_figure_data", "load_run", "make_figure", "save_figure", "series", "sharpness_data",
    "sharpness_figure", "slice_from_data", "spearman", "surface_figure",
    "trace_accuracy_data", "trace_accuracy_figure",
]
