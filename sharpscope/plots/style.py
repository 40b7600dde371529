"""The house style of sharpscope figures: one colour-blind-safe palette, small fonts, light grids.

Figures are :class:`matplotlib.figure.Figure` objects made here (no pyplot, no global rcParams):
each axes is styled explicitly, so plotting never changes another figure's look.
Colours are the Okabe–Ito palette (distinguishable under the common colour-vision deficiencies);
runs cycle through it in order, and line styles tell λ_1, λ_2, ... and thresholds apart.
"""

from __future__ import annotations

import math

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


def log_axis(ax: Axes, which: str = "y") -> None:
    """A logarithmic ``which`` axis (``"x"`` or ``"y"``) whose tick labels never overlap: plain numbers
    (``0.3``, ``20``, ``1e-05``) at 1, 2 and 5 × 10^k when the axis spans one to three decades, at the decades
    only when it spans more, at most six evenly placed ticks with the digits that tell them apart when it spans less than one, and no
    labels on the minor ticks. Call it after the data are drawn (it reads the limits)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

    axis = ax.yaxis if which == "y" else ax.xaxis
    (ax.set_yscale if which == "y" else ax.set_xscale)("log")
    low, high = sorted(ax.get_ylim() if which == "y" else ax.get_xlim())
    decades = math.log10(high / low) if low > 0 and high > low else 1.0
    if decades < 1.0:  # as many digits as tell ticks a quarter of the span apart
        digits = max(3, 2 + math.ceil(-math.log10(max((high - low) / high, 1e-15))))
        axis.set_major_locator(MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10]))
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.{digits}g}"))
    else:
        axis.set_major_locator(LogLocator(base=10.0, subs=(1.0, 2.0, 5.0) if decades <= 3.0 else (1.0,)))
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def figure_legend(fig: Figure, ax: Axes, *, columns: int = 3) -> None:
    """One legend of ``ax``'s labelled artists below all panels of ``fig`` (constrained layout makes room), in
    up to ``columns`` columns: for figures whose legend would squeeze a panel."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=min(columns, len(handles)),
                   fontsize=FONT_SIZE - 1.5, frameon=False)
