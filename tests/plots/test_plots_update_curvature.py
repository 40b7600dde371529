"""The sharpness figure draws κ_u, the curvature along each update, beside λ_max and against the same edge."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np

from sharpscope.io.records import Measurement, UpdateReading
from sharpscope.plots.runs import Event, RunData
from sharpscope.plots.trajectory import sharpness_data, sharpness_figure

matplotlib.use("Agg")


def run(rule: str, edge: float, *, adam: bool) -> RunData:
    thresholds = {"rule": rule, "edge": edge, "gd_edge": 20.0}
    measurements = [Measurement.made({"step": s, "eigenvalues": [10.0 + s], "train_loss": 1.0 / (1 + s),
                                      "thresholds": thresholds, **({"preconditioned_eigenvalues": [30.0 + s]} if adam else {})})
                    for s in (0, 4)]
    events: list[Event] = [
        UpdateReading.made({"step": s, "method": "hvp", "kappa": 1.0 + s,
                            "kappa_preconditioned": (5.0 + s) if adam else None, "thresholds": thresholds})
        for s in range(5)]
    return RunData(path=Path("r"), config={}, measurements=measurements, events=events, summary=None, label="r")


def test_kappa_is_drawn_in_the_form_the_edge_bounds() -> None:
    gd = sharpness_data(run("gd_edge", 20.0, adam=False), ratio=True)["runs"][0]["update_curvature"]
    assert gd["key"] == "kappa" and gd["steps"].tolist() == [0, 1, 2, 3, 4]
    assert np.allclose(gd["values"], [1, 2, 3, 4, 5]) and np.allclose(gd["ratio"], np.arange(1, 6) / 20.0)
    adam = sharpness_data(run("adam_edge", 3800.0, adam=True))["runs"][0]["update_curvature"]
    assert adam["key"] == "kappa_preconditioned" and np.allclose(adam["values"], [5, 6, 7, 8, 9])
    fig = sharpness_figure(run("adam_edge", 3800.0, adam=True))
    lines = {line.get_gid(): line for line in fig.axes[0].get_lines()}
    assert np.allclose(lines["kappa_u"].get_ydata(), [5, 6, 7, 8, 9]) and "edge" in lines and "lambda1" in lines
    none = RunData(path=Path("r"), config={}, measurements=run("gd_edge", 20.0, adam=False).measurements, events=[],
                   summary=None, label="r")
    assert sharpness_data(none)["runs"][0]["update_curvature"] is None
    assert "kappa_u" not in {line.get_gid() for line in sharpness_figure(none).axes[0].get_lines()}


def test_each_ratio_names_its_own_edge() -> None:
    """λ/edge and κ_u/edge name the edge they divide by: Adam's as its multiple of 1/η, 2·edge/(2/η)."""
    def legend(rule: str, edge: float, adam: bool) -> list[str]:
        fig = sharpness_figure(run(rule, edge, adam=adam), ratio=True)
        return [t.get_text() for t in fig.axes[0].get_legend().get_texts()][1:]  # after the band

    assert legend("adam_edge", 3800.0, True) == ["λ(P⁻¹H)_max/(380/η)", "κ_u^P/(380/η) (hvp)"]
    assert legend("momentum_edge", 38.0, False) == ["λ_max/((2+2β)/η)", "κ_u/((2+2β)/η) (hvp)"]
    assert legend("sam_edge", 20.0, False) == ["λ_max/(2/η)", "κ_u/(2/η) (hvp)"]  # ρ = 0: the edge is 2/η
    assert legend("sam_edge", 15.0, False)[0] == "λ_max/SAM-edge"
