"""Figures draw again from the plotted numbers in their JSON (``sharpscope plot --from-figure``): the committed
evidence figures, and the density, per-layer and population figures drawn the same way from fresh numbers."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.figure import Figure

from sharpscope.errors import DataError
from sharpscope.experiments.figures import figure_from_json
from sharpscope.experiments.studies import STUDIES
from sharpscope.io import jsonsafe
from sharpscope.io.studysummary import read_study_summary
from sharpscope.plots.escape_a3 import A3Figure
from sharpscope.plots.escape_a4 import A4Figure
from sharpscope.plots.kinds import draw_from_data, figure_name
from sharpscope.plots.layers import layer_curvature_figure
from sharpscope.plots.population import population_figure
from sharpscope.plots.save import load_figure_data
from tests.pixels import pixels

FIGURES = Path(__file__).resolve().parents[2] / "figures"
REDRAWN = ["eos-cifar5k", "eos-gd-sweep", "sam-edge-mlp", "sam-edge-cnn-smooth", "update-curvature-eos",
           "population-tau", "layers-resnet18", "landscape-resnet18/contour", "landscape-resnet18/surface",
           "escape-a3-matched", "escape-a4-batches"]
DRAWN_BY_STUDY = {"escape-a3-matched": "escape-a3", "escape-a4-batches": "escape-a4"}  # from its summary


def through_json(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` as a figure's JSON stores it (strict JSON: non-finite numbers as strings)."""
    return json.loads(jsonsafe.dumps(data))


def plotted(data: dict[str, Any]) -> dict[str, Any]:
    return data["plot"] if "figure" not in data and isinstance(data.get("plot"), dict) else data


def texts(fig: Figure) -> list[str]:
    """Every tick label, axis label and legend entry of ``fig``, once drawn."""
    pixels(fig)
    out = []
    for ax in fig.axes:
        out += [t.get_text() for t in (*ax.get_xticklabels(), *ax.get_yticklabels())]
        out += [ax.get_xlabel(), ax.get_ylabel()]
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend() is not None)]
    return out + [t.get_text() for leg in legends for t in leg.get_texts()]


@pytest.mark.parametrize("stem", REDRAWN)
def test_committed_figure_draws_again_from_its_json(stem: str) -> None:
    """Each figure draws from its JSON alone, its numbers are the ones drawn, and its caption states the seed and
    the scale; no tick label is in the ``10^k`` form the shared log-axis labels replace."""
    path = FIGURES / f"{stem}.json"
    fig, data, caption = figure_from_json(path)
    assert caption and "seed" in caption and "cpu" in caption.lower(), f"{stem}: caption without seed or scale"
    assert not any("10^" in t or "mathdefault" in t for t in texts(fig)), f"{stem}: 10^k tick labels"
    numbers = plotted(jsonsafe.decode(data))
    name = figure_name(numbers)
    if name == "sharpness":  # each run's λ_max (or λ/edge) is a drawn line
        drawn = [line.get_ydata() for line in fig.axes[0].get_lines() if line.get_gid() == "lambda1"]
        key = "ratio" if numbers.get("ratio") else "eigenvalues"
        assert len(drawn) == len(numbers["runs"])
        for ys, item in zip(drawn, numbers["runs"]):
            np.testing.assert_allclose(np.asarray(ys, dtype=float), np.asarray(item[key][0], dtype=float))
    elif name == "layers":
        bars = [p.get_width() for p in fig.axes[0].patches]
        np.testing.assert_allclose(bars, [row["eigenvalues"][0] for row in numbers["per_layer"]["layers"]])
    elif name == "a3-matched":  # each arm's SA − arm per minimizer are the dots of the bottom panels
        for ax, quantity in zip(fig.axes[3:], ("trace", "jacobian_trace", "test_acc"), strict=True):
            dots = [c.get_offsets()[:, 1] for c in ax.collections if c.get_gid() == "per_minimizer"]
            stored = [numbers["differences"][quantity][arm]["per_minimizer"] for arm in numbers["arms"]]
            np.testing.assert_allclose(np.asarray(dots, dtype=float), np.asarray(stored, dtype=float))
    elif name == "a4-batches":  # one line per form and minimizer over the batches, in each panel
        for ax, quantity in zip(fig.axes, ("trace", "trace_per_loss", "train_loss"), strict=True):
            assert [line.get_xdata().tolist() for line in ax.get_lines()] == [numbers["batches"]] * 6
            stored = [ys for form in ("unscaled", "scaled") for ys in numbers[quantity][form]]
            np.testing.assert_allclose([line.get_ydata() for line in ax.get_lines()], np.asarray(stored, dtype=float))
        assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["1", "64", "128"]  # the batches themselves
    elif name == "contour":
        (path_line,) = [ln for ln in fig.axes[0].get_lines() if ln.get_label() == "training path"]
        np.testing.assert_allclose(path_line.get_xydata(), np.asarray(numbers["path"], dtype=float))
    elif name == "population":
        dots = [ln for ln in fig.axes[0].get_lines() if ln.get_label() in ("vs gap", "vs test error")]
        np.testing.assert_allclose(dots[0].get_xdata(), np.asarray(numbers["tau"]["gap"]["tau"], dtype=float))
        assert fig.axes[0].get_legend() is None and fig.legends  # below the panels, over no interval
    else:
        assert name == "surface" and fig.axes[0].name == "3d"


@pytest.mark.parametrize(("stem", "study"), DRAWN_BY_STUDY.items())
def test_study_figure_json_is_what_its_study_draws_from_its_summary(stem: str, study: str) -> None:
    """The committed figure's plotted numbers and caption are those its study draws from the committed summary, and
    redrawing them from the JSON gives the study's pixels."""
    summary = read_study_summary(FIGURES / f"{study}-summary.json")
    [(_, fig, numbers, caption)] = STUDIES[study].draw(summary)
    stored = load_figure_data(FIGURES / f"{stem}.json")
    assert through_json({"plot": numbers}) == stored["data"] and caption == stored["caption"]
    np.testing.assert_array_equal(pixels(draw_from_data(stored["data"])), pixels(fig))


@pytest.mark.parametrize(("stem", "typed"), [("escape-a3-matched", A3Figure), ("escape-a4-batches", A4Figure)])
def test_study_figure_numbers_read_back_byte_identical(stem: str, typed: type) -> None:
    stored = load_figure_data(FIGURES / f"{stem}.json")["data"]["plot"]
    assert jsonsafe.dumps(typed.from_dict(stored).to_dict()) == jsonsafe.dumps(stored)


def test_update_curvature_legend_names_each_optimizers_edge() -> None:
    fig, _, _ = figure_from_json(FIGURES / "update-curvature-eos.json")
    labels = texts(fig)
    assert {"gd: λ_max/(2/η)", "gd: κ_u/(2/η) (hvp)", "momentum: λ_max/((2+2β)/η)", "momentum: κ_u/((2+2β)/η) (hvp)",
            "adam: λ(P⁻¹H)_max/(38/η)", "adam: κ_u^P/(38/η) (hvp)"} <= set(labels)
    assert not any(t.endswith("/edge") for t in labels)


def synthetic_population() -> dict[str, Any]:
    """Three measures over five models: ``a`` ranks the gap exactly (τ = 1), ``c`` in reverse (τ = −1)."""
    gaps = [0.1, 0.2, 0.3, 0.4, 0.5]
    models = [{"name": f"m{i}", "gap_acc": g, "measures": {"a": {"value": 10.0 ** i}, "b": 1.0, "c": -g}}
              for i, g in enumerate(gaps)]
    models.append({"name": "cut", "gap_acc": 0.9, "reached_stop": False, "measures": {"a": 1.0, "b": 1.0, "c": 1.0}})
    row = {"tau": 1.0, "interval": [0.6, 1.0]}
    measures = {"a": {"gap": row, "test_error": row}, "b": {"gap": {"tau": math.nan, "interval": [math.nan, math.nan]},
                                                           "test_error": {"tau": 0.1, "interval": [-0.5, 0.6]}},
                "c": {"gap": {"tau": -1.0, "interval": [-1.0, -0.6]}, "test_error": {"tau": -1.0, "interval": [-1, 0]}},
                "broken": {"error": "failed"}}
    return {"ranking": {"measures": measures, "mde": {"critical": 0.8}}, "models": models}


def test_population_figure_draws_again_from_its_numbers() -> None:
    fig, data = population_figure(synthetic_population())
    assert data["figure"] == "population" and data["measures"] == ["a", "b", "c"] and data["runs"][-1] == "m4"
    assert list(k for k in data if k.startswith("scatter:")) == ["scatter:a", "scatter:c"]  # highest τ, then lowest
    assert [ax.get_title() for ax in fig.axes[1:3]] == ["a: τ = +1.00", "c: τ = -1.00"]
    drawn = pixels(fig)  # once: a second layout pass may move things by a pixel
    np.testing.assert_array_equal(pixels(draw_from_data(through_json(data))), drawn)
    legacy = through_json({"plot": {k: v for k, v in data.items() if k != "figure"}})  # stored before it was named
    np.testing.assert_array_equal(pixels(draw_from_data(legacy)), drawn)


def test_layers_figure_draws_again_from_its_numbers() -> None:
    row = {"eigenvalues": [2.0], "trace": {"estimate": 5.0, "stderr": 0.5}}
    report = {"eigenvalues": [3.0], "trace": {"estimate": 9.0, "stderr": 1.0},
              "per_layer": {"layers": [{"name": "first", **row}, {"name": "second", **row, "eigenvalues": [0.5]}]}}
    fig = layer_curvature_figure(report, log=True)
    np.testing.assert_array_equal(pixels(draw_from_data(through_json(report))), pixels(fig))  # log by default
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert "0.01" in labels or "0.1" in labels  # plain numbers on the log axis


def test_density_figure_draws_again_from_its_numbers() -> None:
    from sharpscope.plots.density import density_data, density_figure

    result = {"nodes": [[0.0, 1.0, 4.0]], "weights": [[0.5, 0.3, 0.2]], "sigma2": 0.01, "trace": 1.3,
              "trace_stderr": 0.1, "settings": {"grid_size": 200}}
    data = density_data([result], labels=["h"])
    np.testing.assert_array_equal(pixels(draw_from_data(through_json(data))), pixels(density_figure([result],
                                                                                                    labels=["h"])))


def test_unknown_figure_data_is_one_line() -> None:
    with pytest.raises(DataError, match=r"unknown kind \('heatmap'\)"):
        draw_from_data({"figure": "heatmap"})
    with pytest.raises(DataError, match=r"unknown kind \(None\)"):
        draw_from_data({"values": [1, 2]})
