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

from sharpscope.plots.density import density_data, density_figure, load_density
from sharpscope.plots.kinds import auto_kind, make_figure
from sharpscope.plots.landscape import contour_figure, landscape_data, line_figure, surface_figure
from sharpscope.plots.layers import layer_curvature_figure
from sharpscope.plots.runs import RunData, load_run, series
from sharpscope.plots.save import load_figure_data, save_figure
from sharpscope.plots.trajectory import (
    escape_data, escape_figure, sharpness_data, sharpness_figure, spearman, trace_accuracy_data,
    trace_accuracy_figure,
)

__all__ = [
    "RunData", "auto_kind", "contour_figure", "density_data", "density_figure", "escape_data", "escape_figure",
    "landscape_data", "layer_curvature_figure", "line_figure", "load_density", "load_figure_data", "load_run",
    "make_figure", "save_figure", "series", "sharpness_data", "sharpness_figure", "spearman", "surface_figure",
    "trace_accuracy_data", "trace_accuracy_figure",
]
