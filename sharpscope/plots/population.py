"""The population study's figure: how well each sharpness measure ranks models by generalisation.

:func:`population_figure` has three panels: Kendall's τ_b of every measure with the generalisation gap
(train − test accuracy) and with the test error, each with its bootstrap 95% interval, over a grey band
``±`` the smallest |τ| the population can detect; then the models' gap against the measure with the
highest and with the lowest τ with the gap (log axis when the values are positive and span a decade).
:func:`draw_population` draws it from the plotted numbers alone (a figure's JSON).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from sharpscope.io.jsonsafe import as_number
from sharpscope.measures.result import measure_value
from sharpscope.plots.style import color, figure_legend, label_axes, log_axis, new_figure

TARGETS = {"gap": "vs gap", "test_error": "vs test error"}  # τ with each: its key and legend entry


def population_figure(results: Mapping[str, Any]) -> tuple[Figure, dict[str, Any]]:
    """The figure and its plotted numbers (:func:`population_data`, drawn by :func:`draw_population`)."""
    data = population_data(results)
    return draw_population(data), data


def population_data(results: Mapping[str, Any]) -> dict[str, Any]:
    """The plotted numbers from the study's ``results`` (``ranking`` and ``models``), or from
    :func:`~sharpscope.experiments.rank_correlation.rank_measures`' result and its records
    (``{"ranking": ranked, "models": records}``; a record without ``reached_stop`` counts as ranked): the
    ``measures`` ranked, the undetectable band's ``critical`` |τ|, per target the ``tau`` with its interval
    (``low``, ``high``), the ``runs`` ranked, and ``scatter:NAME`` (each model's value and gap) for the measure
    with the highest τ with the gap, then for the one with the lowest."""
    ranking = results["ranking"]
    rows = {k: v for k, v in ranking["measures"].items() if "error" not in v}
    names = list(rows)
    plotted: dict[str, Any] = {"figure": "population", "measures": names,
                               "critical": (ranking.get("mde") or {}).get("critical"), "tau": {}}
    for target in TARGETS:
        plotted["tau"][target] = {"tau": [as_number(rows[n][target]["tau"]) for n in names],
                                  "low": [as_number(rows[n][target]["interval"][0]) for n in names],
                                  "high": [as_number(rows[n][target]["interval"][1]) for n in names]}
    included = [m for m in results["models"] if m.get("reached_stop", True)]  # records without it: all ranked
    gap = [as_number(m["gap_acc"]) for m in included]
    plotted["runs"] = [str(m.get("name", i)) for i, m in enumerate(included)]
    if names:
        defined = [n for n in names if np.isfinite(as_number(rows[n]["gap"]["tau"]))] or names
        order = sorted(defined, key=lambda n: as_number(rows[n]["gap"]["tau"]))
        for name in (order[-1], order[0]):
            values = [measure_value(m["measures"][name], name) for m in included]
            plotted[f"scatter:{name}"] = {"value": values, "gap": gap}
    return plotted


def draw_population(data: Mapping[str, Any]) -> Figure:
    """The three panels of the module docstring from :func:`population_data`'s plotted numbers alone; the legend
    sits below the panels, so it covers no interval."""
    names = list(data["measures"])
    fig, (ax, best_ax, worst_ax) = new_figure(1, 3)
    y = np.arange(len(names))
    critical = data.get("critical")
    if critical is not None:
        ax.axvspan(-critical, critical, color="0.85", label=f"|τ| < {critical:.2f}: undetectable")
    for i, target in enumerate(TARGETS):
        row = data["tau"][target]
        tau, lo, hi = (np.array([as_number(v) for v in row[key]]) for key in ("tau", "low", "high"))
        offset = (i - 0.5) * 0.3
        # a percentile interval need not contain the point estimate: drawn as a segment, not as ± errors
        ax.hlines(y + offset, lo, hi, color=color(i), lw=1.2)
        ax.plot(tau, y + offset, "o", ms=3, color=color(i), label=TARGETS[target])
    ax.axvline(0.0, color="0.3", lw=0.6)
    ax.set_yticks(y, names, fontsize=6)
    ax.set_xlim(-1.05, 1.05)
    label_axes(ax, "Kendall's τ_b (95% bootstrap interval)", "", title="rank correlation per measure")
    figure_legend(fig, ax)
    gap_tau = dict(zip(names, data["tau"]["gap"]["tau"]))
    scatters = [key.removeprefix("scatter:") for key in data if key.startswith("scatter:")]
    for panel, name in zip((best_ax, worst_ax), scatters):
        values = np.array([as_number(v) for v in data[f"scatter:{name}"]["value"]])
        gap = np.array([as_number(v) for v in data[f"scatter:{name}"]["gap"]])
        panel.scatter(values, 100 * gap, s=12, color=color(2))
        if (values > 0).all() and values.max() > 10 * values.min():
            log_axis(panel, "x")
        label_axes(panel, name, "gap (train − test accuracy, points)",
                   title=f"{name}: τ = {as_number(gap_tau[name]):+.2f}")
    return fig
