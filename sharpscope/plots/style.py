"""The house style of sharpscope figures: one colour-blind-safe palette, small fonts, light grids.

Figures are :class:`matplotlib.figure.Figure` objects made here (no pyplot, no global rcParams):
each axes is styled explicitly, so plotting never changes another figure's look.
Colours are the Okabe–Ito palette (distinguishable under the common colour-vision deficiencies);
runs cycle through it in order, and line styles tell λ_1, λ_2, ... and thresholds apart.
"""

from __future__ import annotations

from matplotlib.axes import Axes
from matplotlib.figure import Figure

PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")
EIGEN_STYLES = ("-", "--", ":", "-.")
FONT_SIZE = 8.0
PANEL_SIZE = (4.2, 2.7)


def color(i: int) -> str:
    """The ``i``-th colour of the palette (cycling)."""
    return PALETTE[i % len(PALETTE)]


def new_figure(rows: int, cols: int = 1, *, sharex: bool = False) -> tuple[Figure, list[Axes]]:
    """A figure of ``rows × cols`` panels of :data:`PANEL_SIZE` inches each, with constrained layout;
    returns it with its axes in row-major order."""
    fig = Figure(figsize=(PANEL_SIZE[0] * cols, PANEL_SIZE[1] * rows), layout="constrained")
    grid = fig.subplots(rows, cols, sharex=sharex, squeeze=False)
    axes = [ax for row in grid for ax in row]
    for ax in axes:
        ax.tick_params(which="both", labelsize=FONT_SIZE - 1)
        ax.grid(True, linewidth=0.4, alpha=0.4)
        ax.spines[["top", "right"]].set_visible(False)
    return fig, axes


def label_axes(ax: Axes, xlabel: str, ylabel: str, *, title: str | None = None) -> None:
    """Axis labels (and an optional panel title) in the house font size."""
    ax.set_xlabel(xlabel, fontsize=FONT_SIZE)
    ax.set_ylabel(ylabel, fontsize=FONT_SIZE)
    if title:
        ax.set_title(title, fontsize=FONT_SIZE)


def legend(ax: Axes, *, inside: int = 4) -> None:
    """A small legend, when the axes has labelled artists: inside the panel for up to ``inside``
    entries, beside it (right, where constrained layout makes room) for more, so it never hides data."""
    handles, labels = ax.get_legend_handles_labels()
    if len(handles) > inside:
        ax.legend(fontsize=FONT_SIZE - 1.5, frameon=False, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    elif handles:
        ax.legend(fontsize=FONT_SIZE - 1.5, frameon=False)
