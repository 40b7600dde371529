"""Landscape figures: what each draws, and clear errors for slices they cannot show."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from matplotlib.figure import Figure

from sharpscope.errors import ConfigError, DataError
from sharpscope.io import jsonsafe
from sharpscope.landscape import SliceResult
from sharpscope.plots.kinds import draw_from_data
from sharpscope.plots.landscape import contour_figure, draw_slice, landscape_data, line_figure, surface_figure
from tests.pixels import pixels


def make_result(dims: int, *, kind: str = "eig", accuracy: bool = True, path: bool = False) -> SliceResult:
    a = np.linspace(-1, 1, 7)
    b = np.linspace(-2, 2, 5) if dims == 2 else None
    loss = 0.3 + 2.0 * a**2 if b is None else 0.3 + 2.0 * a[:, None] ** 2 + 0.5 * b[None, :] ** 2
    loss = loss.copy()
    loss.flat[-1] = np.inf  # overflow far out must not break a figure
    return SliceResult(alphas=a, betas=b, loss=loss, accuracy=np.full(loss.shape, 0.5) if accuracy else None,
                       center_loss=0.3, center_accuracy=0.5 if accuracy else None,
                       directions={"kind": kind, "labels": ["first", "second"][:dims], "eigenvalues": [4.0, 1.0],
                                   "slopes": [0.0, 0.0]},
                       settings={}, seconds=0.1, evaluations=loss.size + 1,
                       path=np.array([[0.8, 1.5], [0.4, 0.5], [0.0, 0.0]]) if path else None)


def render(fig: Figure) -> None:
    fig.savefig(io.BytesIO(), format="png")


def test_line_figure_draws_loss_quadratic_model_and_accuracy() -> None:
    fig = line_figure(make_result(1))
    render(fig)
    main, twin = fig.axes
    labels = [line.get_label() for line in main.get_lines()]
    assert labels[0] == "loss" and "L₀ + sα + λ₁α²/2" in labels and main.get_xlabel() == "first"
    np.testing.assert_allclose(main.get_lines()[1].get_ydata(), 0.3 + 2.0 * np.linspace(-1, 1, 7) ** 2)
    assert twin.get_ylabel() == "accuracy"
    random_line = line_figure(make_result(1, kind="random", accuracy=False))
    assert len(random_line.axes) == 1 and len(random_line.axes[0].get_lines()) == 2  # loss and center only


def test_contour_and_surface_draw_the_grid_and_the_path() -> None:
    result = make_result(2, path=True)
    fig = contour_figure(result, log=True, vmax=3.0)
    render(fig)
    ax = fig.axes[0]
    traj = [line for line in ax.get_lines() if line.get_label() == "training path"]
    assert len(traj) == 1 and np.allclose(traj[0].get_xydata(), result.path)
    assert ax.get_xlabel() == "first" and ax.get_ylabel() == "second"
    assert fig.axes[1].get_ylabel() == "log10 loss"  # the colour bar
    render(contour_figure(result, quantity="accuracy", filled=True, levels=[0.4, 0.5, 0.6], path=False))
    surface = surface_figure(result)
    render(surface)
    assert surface.axes[0].name == "3d"
    data = landscape_data(result)
    assert data["labels"] == ["first", "second"] and data["loss"].shape == (7, 5)


def test_figures_refuse_what_they_cannot_show() -> None:
    with pytest.raises(ConfigError, match="1-D slice"):
        line_figure(make_result(2))
    with pytest.raises(ConfigError, match="2-D slice"):
        contour_figure(make_result(1))
    with pytest.raises(ConfigError, match="2-D slice"):
        surface_figure(make_result(1))
    with pytest.raises(ConfigError, match="no accuracy"):
        contour_figure(make_result(2, accuracy=False), quantity="accuracy")
    with pytest.raises(ConfigError, match="quantity"):
        contour_figure(make_result(2), quantity="gradient")  # type: ignore[arg-type]
    shifted = make_result(2)
    with pytest.raises(ConfigError, match="log scale"):
        contour_figure(SliceResult(**{**shifted.__dict__, "loss": shifted.loss - 1.0}), log=True)


@pytest.mark.parametrize(("figure", "draw"), [("line", {}), ("contour", {"log": True, "vmax": 3.0}),
                                               ("surface", {"log": True})])
def test_each_figure_draws_again_from_its_stored_json(figure: str, draw: dict) -> None:
    """The stored numbers (through strict JSON: the overflowed point as "Infinity") give the same pixels as the
    slice itself, with the drawing options they record."""
    result = make_result(1 if figure == "line" else 2, path=figure != "line")
    direct = {"line": line_figure, "contour": contour_figure, "surface": surface_figure}[figure](result, **draw)
    stored = json.loads(jsonsafe.dumps(landscape_data(result, figure, **draw)))
    assert stored["figure"] == figure and stored["draw"] == draw
    np.testing.assert_array_equal(pixels(draw_from_data(stored)), pixels(direct))


def test_slice_figure_data_name_their_figure() -> None:
    with pytest.raises(ConfigError, match="unknown slice figure 'heatmap'"):
        landscape_data(make_result(2), "heatmap")
    data = landscape_data(make_result(2))
    data.pop("figure")
    with pytest.raises(DataError, match="name no figure"):
        draw_slice(data)
