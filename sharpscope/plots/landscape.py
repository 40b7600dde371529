"""Figures of loss-landscape slices (:class:`~sharpscope.landscape.SliceResult`).

* :func:`line_figure` — a 1-D slice: loss against ``α`` (accuracy on a second axis), with the
  quadratic model ``L₀ + s α + λ₁ α²/2`` (``s = d·∇L``) drawn for a slice along the top eigenvector.
* :func:`contour_figure` — a 2-D slice as contour lines over ``(α, β)``, with the center and a
  trajectory's projected path (start ○, end ★) when the result carries one.
* :func:`surface_figure` — a 2-D slice as a 3-D surface.

Axis labels come from the directions' description. Non-finite values (far from the center a loss
can overflow) are left blank; ``vmax`` clips the colour range so the basin stays readable.
:func:`landscape_data` returns the plotted numbers of one of these figures for
:func:`~sharpscope.plots.save.save_figure` (which figure, and its drawing options, included), and
:func:`draw_slice` draws that figure again from them alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, get_args

import numpy as np
from matplotlib.figure import Figure

from sharpscope.errors import ConfigError, DataError
from sharpscope.landscape import SliceResult
from sharpscope.plots.style import FONT_SIZE, color, figure_legend, label_axes, legend, new_figure
from sharpscope.validation import check_choice

Quantity = Literal["loss", "accuracy"]
FIGURES = ("line", "contour", "surface")


def _labels(result: SliceResult) -> list[str]:
    labels = result.directions.get("labels") or []
    return [str(x) for x in labels] + [f"direction {i + 1}" for i in range(len(labels), result.dims)]


def _values(result: SliceResult, quantity: Quantity, log: bool, vmax: float | None) -> np.ndarray:
    """The plotted grid, non-finite entries as NaN, clipped at ``vmax``, log10 when asked."""
    check_choice("quantity", quantity, get_args(Quantity))
    values = result.loss if quantity == "loss" else result.accuracy
    if values is None:
        raise ConfigError("this slice has no accuracy (outputs are not class scores, or it was not evaluated)")
    z = np.where(np.isfinite(values), values, np.nan).astype(np.float64)
    if vmax is not None:
        z = np.minimum(z, vmax)
    if log:
        if np.nanmin(z) <= 0:
            raise ConfigError(f"a log scale needs positive {quantity} values, the smallest is {np.nanmin(z):.3g}")
        z = np.log10(z)
    return z


def _check_2d(result: SliceResult) -> None:
    if result.dims != 2:
        raise ConfigError(f"this figure needs a 2-D slice, got a {result.dims}-D one")


def line_figure(result: SliceResult, *, accuracy: bool = True, quadratic: bool = True) -> Figure:
    """Loss along a 1-D slice; the accuracy on a right-hand axis when present and ``accuracy``."""
    if result.dims != 1:
        raise ConfigError(f"line_figure needs a 1-D slice, got a {result.dims}-D one")
    fig, (ax,) = new_figure(1)
    alphas = result.alphas
    ax.plot(alphas, np.where(np.isfinite(result.loss), result.loss, np.nan), color=color(0), marker=".",
            markersize=3, label="loss")
    eigenvalues, slopes = result.directions.get("eigenvalues"), result.directions.get("slopes")
    if quadratic and result.directions.get("kind") == "eig" and eigenvalues and slopes:
        model = result.center_loss + float(slopes[0]) * alphas + 0.5 * float(eigenvalues[0]) * alphas**2
        ax.plot(alphas, model, color=color(1), linestyle="--", linewidth=1, label="L₀ + sα + λ₁α²/2")
    ax.plot([0.0], [result.center_loss], color=color(6), marker="+", linestyle="none", label="center")
    label_axes(ax, _labels(result)[0], "loss")
    if accuracy and result.accuracy is not None:
        twin = ax.twinx()
        twin.plot(alphas, result.accuracy, color=color(2), linestyle=":", label="accuracy")
        twin.set_ylabel("accuracy", fontsize=FONT_SIZE, color=color(2))
        twin.tick_params(labelsize=FONT_SIZE - 1)
    legend(ax)
    return fig


def contour_figure(result: SliceResult, *, quantity: Quantity = "loss", levels: int | Sequence[float] = 25,
                   log: bool = False, vmax: float | None = None, filled: bool = False, path: bool = True) -> Figure:
    """Contours of a 2-D slice over ``(α, β)``; the projected path when the result has one and ``path``."""
    _check_2d(result)
    z = _values(result, quantity, log, vmax)
    fig, (ax,) = new_figure(1)
    fig.set_size_inches(4.4, 3.6)
    draw = ax.contourf if filled else ax.contour
    cs = draw(result.alphas, result.betas, z.T, levels=levels, cmap="viridis")
    bar = fig.colorbar(cs, ax=ax)
    bar.set_label(f"log10 {quantity}" if log else quantity, fontsize=FONT_SIZE)
    bar.ax.tick_params(labelsize=FONT_SIZE - 1)
    if path and result.path is not None:
        p = result.path
        ax.plot(p[:, 0], p[:, 1], color=color(1), marker=".", markersize=3, linewidth=1, label="training path")
        ax.plot(p[:1, 0], p[:1, 1], color=color(1), marker="o", fillstyle="none", linestyle="none",
                label="first iterate")
        ax.plot(p[-1:, 0], p[-1:, 1], color=color(1), marker="*", markersize=12, linestyle="none",
                label="last iterate")
    ax.plot([0.0], [0.0], color=color(6), marker="+", markersize=9, markeredgewidth=1.4, linestyle="none",
            label="center (0, 0)")
    labels = _labels(result)
    label_axes(ax, labels[0], labels[1])
    ax.grid(False)
    figure_legend(fig, ax, columns=2)  # below the panel: the contours fill it
    return fig


def surface_figure(result: SliceResult, *, quantity: Quantity = "loss", log: bool = False,
                   vmax: float | None = None, elevation: float = 35.0, azimuth: float = -60.0) -> Figure:
    """A 2-D slice as a 3-D surface over ``(α, β)``."""
    _check_2d(result)
    z = _values(result, quantity, log, vmax)
    fig = Figure(figsize=(4.4, 3.6), layout="constrained")
    ax = fig.add_subplot(projection="3d")
    assert result.betas is not None  # checked by _check_2d
    A, B = np.meshgrid(result.alphas, result.betas, indexing="ij")
    ax.plot_surface(A, B, z, cmap="viridis", linewidth=0, antialiased=True, rcount=len(result.alphas),
                    ccount=len(result.betas))
    ax.view_init(elev=elevation, azim=azimuth)
    labels = _labels(result)
    ax.set_xlabel(labels[0], fontsize=FONT_SIZE - 1)
    ax.set_ylabel(labels[1], fontsize=FONT_SIZE - 1)
    ax.set_zlabel(f"log10 {quantity}" if log else quantity, fontsize=FONT_SIZE - 1)
    ax.tick_params(labelsize=FONT_SIZE - 2)
    return fig


def landscape_data(result: SliceResult, figure: str = "contour", **draw: Any) -> dict[str, Any]:
    """The plotted numbers of the ``figure`` (``line``, ``contour`` or ``surface``) of a slice, with its drawing
    options ``draw`` (for ``save_figure(..., data=...)``; :func:`draw_slice` draws the figure from them)."""
    if figure not in FIGURES:
        raise ConfigError(f"unknown slice figure {figure!r}; valid: {', '.join(FIGURES)}")
    return {"figure": figure, "draw": draw, "alphas": result.alphas, "betas": result.betas, "loss": result.loss,
            "accuracy": result.accuracy, "center_loss": result.center_loss, "path": result.path,
            "labels": _labels(result), "directions": result.directions.get("kind"),
            "eigenvalues": result.directions.get("eigenvalues"), "slopes": result.directions.get("slopes")}


def slice_from_data(data: Mapping[str, Any]) -> SliceResult:
    """The slice that :func:`landscape_data` stored (arrays, center loss, path, direction labels, and the top
    eigenvalues and slopes of an ``eig`` slice); what a figure does not draw (cost, settings) is left empty."""
    def array(key: str) -> np.ndarray | None:
        value = data.get(key)
        return None if value is None else np.asarray(value, dtype=np.float64)

    alphas, loss = array("alphas"), array("loss")
    if alphas is None or loss is None:
        raise DataError("slice figure data without 'alphas' and 'loss'")
    directions = {"kind": data.get("directions"), "labels": list(data.get("labels") or []),
                  "eigenvalues": data.get("eigenvalues"), "slopes": data.get("slopes")}
    return SliceResult(alphas=alphas, betas=array("betas"), loss=loss, accuracy=array("accuracy"),
                       center_loss=float(data["center_loss"]), center_accuracy=None, directions=directions,
                       settings={}, seconds=0.0, evaluations=0, path=array("path"))


def draw_slice(data: Mapping[str, Any], **options: Any) -> Figure:
    """The figure named by ``data["figure"]`` (``line``, ``contour``, ``surface``) of the slice stored in ``data``
    (:func:`landscape_data`), drawn with ``options``."""
    figure = data.get("figure")
    if figure not in FIGURES:
        raise DataError(f"slice figure data name no figure ({figure!r}); valid: {', '.join(FIGURES)}")
    result = slice_from_data(data)
    if figure == "line":
        return line_figure(result, **options)
    return (contour_figure if figure == "contour" else surface_figure)(result, **options)
