"""The figure of the ``escape-a4`` study: tr(H), tr(H)/L and the training loss at the end of SA against the
perturbation batch B, one colour per bad minimizer, ρ and η′ unscaled (solid) and scaled by √(B/B₀) (dashed)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from matplotlib.figure import Figure

from sharpscope.plots.style import color, label_axes, legend, new_figure

PANELS = (("trace", "tr(H)"), ("trace_per_loss", "tr(H)/L"), ("train_loss", "training loss L"))
STYLES = {"unscaled": "-", "scaled": "--"}


def _value(reading: Mapping[str, Any], quantity: str) -> float:
    if quantity == "trace_per_loss":
        loss = float(reading["train_loss"])
        return float(reading["trace_paired"]) / loss if loss > 0 else math.nan
    return float(reading[quantity])


def a4_figure(results: Mapping[str, Any]) -> tuple[Figure, dict[str, Any]]:
    """The figure and its plotted numbers from the study's ``results`` (``readings[form][B]``, one per
    minimizer); tr(H)/L is the shared-probe tr(H) over the reading's training loss."""
    bs = [int(b) for b in results["batches"]]
    fig, axes = new_figure(1, len(PANELS))
    plotted: dict[str, Any] = {"batches": bs, "minimizers": list(results["minimizers"]),
                               "runs": {form: {str(b): [r["run"] for r in results["readings"][form][str(b)]] for b in bs}
                                        for form in STYLES}}
    for ax, (quantity, label) in zip(axes, PANELS, strict=True):
        plotted[quantity] = {}
        for form, style in STYLES.items():
            rows = results["readings"][form]
            lines = [[_value(rows[str(b)][j], quantity) for b in bs] for j in range(len(plotted["minimizers"]))]
            for j, ys in enumerate(lines):
                ax.plot(bs, ys, style, marker="o", ms=3, color=color(j),
                        label=f"minimizer {plotted['minimizers'][j]}, {form}")
            plotted[quantity][form] = lines
        ax.set_xscale("log", base=2)
        if quantity != "trace":
            ax.set_yscale("log")  # a run that leaves its minimizer ends orders of magnitude away
        label_axes(ax, "perturbation batch B", label, title=f"{label} at the end of SA")
    legend(axes[0], inside=6)
    return fig, plotted
