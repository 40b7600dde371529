"""The figure of the ``escape-a4`` study: tr(H), tr(H)/L and the training loss at the end of SA against the
perturbation batch B, one colour per bad minimizer, ρ and η′ unscaled (solid) and scaled by √(B/B₀) (dashed).

:func:`a4_data` reads the plotted numbers from the study's results; :func:`draw_a4` draws them alone (a
figure's JSON, ``sharpscope plot --from-figure``), with the batch sizes themselves as the ticks of the
logarithmic B axis and the legend below the panels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from sharpscope.io.readings import ModelReading
from sharpscope.plots.style import color, figure_legend, label_axes, log_axis, new_figure

PANELS = (("trace", "tr(H)"), ("trace_per_loss", "tr(H)/L"), ("train_loss", "training loss L"))
STYLES = {"unscaled": "-", "scaled": "--"}


def _value(reading: ModelReading, quantity: str) -> float:
    if quantity == "trace_per_loss":
        loss = float(reading.train_loss)
        return float(reading.trace_paired) / loss if loss > 0 else math.nan
    return float(getattr(reading, quantity))


def a4_data(results: Mapping[str, Any]) -> dict[str, Any]:
    """The plotted numbers from the study's ``results`` (``readings[form][B]``, one per minimizer): the
    ``batches``, the ``minimizers``, each reading's ``runs``, and per quantity of :data:`PANELS` and form one
    line per minimizer over the batches; tr(H)/L is the shared-probe tr(H) over the reading's training loss."""
    bs = [int(b) for b in results["batches"]]
    minimizers = list(results["minimizers"])
    reads = {form: {b: [ModelReading.from_dict(r) for r in results["readings"][form][str(b)]] for b in bs}
             for form in STYLES}
    plotted: dict[str, Any] = {"figure": "a4-batches", "batches": bs, "minimizers": minimizers,
                               "runs": {form: {str(b): [r.run for r in reads[form][b]] for b in bs} for form in STYLES}}
    for quantity, _ in PANELS:
        plotted[quantity] = {form: [[_value(reads[form][b][j], quantity) for b in bs]
                                    for j in range(len(minimizers))] for form in STYLES}
    return plotted


def draw_a4(data: Mapping[str, Any]) -> Figure:
    """The three panels of the module docstring from :func:`a4_data`'s plotted numbers alone."""
    bs = [int(b) for b in data["batches"]]
    fig, axes = new_figure(1, len(PANELS))
    for ax, (quantity, label) in zip(axes, PANELS, strict=True):
        for form, style in STYLES.items():
            for j, ys in enumerate(data[quantity][form]):
                ax.plot(bs, [float(y) for y in ys], style, marker="o", ms=3, color=color(j),
                        label=f"minimizer {data['minimizers'][j]}, {form}")
        ax.set_xscale("log", base=2)
        ax.set_xticks(bs, [str(b) for b in bs])
        ax.xaxis.set_minor_formatter(NullFormatter())
        if quantity != "trace":
            log_axis(ax, "y")  # a run that leaves its minimizer ends orders of magnitude away
        label_axes(ax, "perturbation batch B", label, title=f"{label} at the end of SA")
    figure_legend(fig, axes[0], columns=len(STYLES) * len(data["minimizers"]))
    return fig
