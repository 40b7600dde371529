"""The figure of the ``escape-a4`` study: tr(H), tr(H)/L and the training loss at the end of SA against the
perturbation batch B, one colour per bad minimizer, ρ and η′ unscaled (solid) and scaled by √(B/B₀) (dashed).

:func:`a4_data` reads the plotted numbers from the study's results; :func:`draw_a4` draws them alone (a
figure's JSON, ``sharpscope plot --from-figure``), with the batch sizes themselves as the ticks of the
logarithmic B axis and the legend below the panels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from sharpscope.io.readings import A4Results, ModelReading, StoredRecord
from sharpscope.plots.style import color, figure_legend, label_axes, log_axis, new_figure

PANELS = (("trace", "tr(H)"), ("trace_per_loss", "tr(H)/L"), ("train_loss", "training loss L"))
STYLES = {"unscaled": "-", "scaled": "--"}


@dataclass(frozen=True)
class A4Figure(StoredRecord):
    """The plotted numbers of :func:`draw_a4` (``figure`` names it): the ``batches``, the ``minimizers``, the run of
    each reading (``runs``: form ↦ B ↦ one per minimizer) and, per quantity of :data:`PANELS` and form, one line
    per minimizer over the batches."""

    figure: str
    batches: list[int]
    minimizers: list[int]
    runs: dict[str, dict[int, list[str]]]
    trace: dict[str, list[list[float]]]
    trace_per_loss: dict[str, list[list[float]]]
    train_loss: dict[str, list[list[float]]]


def _value(reading: ModelReading, quantity: str) -> float:
    if quantity == "trace_per_loss":
        loss = float(reading.train_loss)
        return float(reading.trace_paired) / loss if loss > 0 else math.nan
    return float(getattr(reading, quantity))


def a4_data(results: Mapping[str, Any]) -> dict[str, Any]:
    """The stored :class:`A4Figure` of the study's ``results`` (:class:`~sharpscope.io.readings.A4Results`, the
    end readings one per minimizer); tr(H)/L is the shared-probe tr(H) over the reading's training loss."""
    stored = A4Results.from_dict(results)
    bs, reads = stored.batches, stored.readings
    lines = {quantity: {form: [[_value(reads[form][b][j], quantity) for b in bs]
                               for j in range(len(stored.minimizers))] for form in STYLES} for quantity, _ in PANELS}
    return A4Figure("a4-batches", bs, stored.minimizers,
                    {form: {b: [r.run for r in reads[form][b]] for b in bs} for form in STYLES}, **lines).to_dict()


def draw_a4(data: Mapping[str, Any]) -> Figure:
    """The three panels of the module docstring from :func:`a4_data`'s plotted numbers alone."""
    plotted = A4Figure.from_dict(data)
    bs = plotted.batches
    fig, axes = new_figure(1, len(PANELS))
    for ax, (quantity, label) in zip(axes, PANELS, strict=True):
        for form, style in STYLES.items():
            for j, ys in enumerate(getattr(plotted, quantity)[form]):
                ax.plot(bs, ys, style, marker="o", ms=3, color=color(j),
                        label=f"minimizer {plotted.minimizers[j]}, {form}")
        ax.set_xscale("log", base=2)
        ax.set_xticks(bs, [str(b) for b in bs])
        ax.xaxis.set_minor_formatter(NullFormatter())
        if quantity != "trace":
            log_axis(ax, "y")  # a run that leaves its minimizer ends orders of magnitude away
        label_axes(ax, "perturbation batch B", label, title=f"{label} at the end of SA")
    figure_legend(fig, axes[0], columns=len(STYLES) * len(plotted.minimizers))
    return fig
