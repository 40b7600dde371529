"""The population study's figure: how well each sharpness measure ranks models by generalisation.

:func:`population_figure` has three panels: Kendall's τ_b of every measure with the generalisation gap
(train − test accuracy) and with the test error, each with its bootstrap 95% interval, over a grey band
``±`` the smallest |τ| the population can detect; then the models' gap against the measure with the
highest and with the lowest τ with the gap (log axis when the values are positive and span a decade).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from sharpscope.experiments.rank_correlation import measure_value
from sharpscope.plots.style import color, label_axes, legend, new_figure


def _num(value: Any) -> float:
    """A stored number (non-finite ones come back from JSON as strings such as ``"NaN"``)."""
    return float("nan") if value is None else float(value)


def population_figure(results: Mapping[str, Any]) -> tuple[Figure, dict[str, Any]]:
    """The figure and its plotted numbers from the study's ``results`` (``ranking`` and ``models``), or from
    :func:`~sharpscope.experiments.rank_correlation.rank_measures`' result and its records
    (``{"ranking": ranked, "models": records}``; a record without ``reached_stop`` counts as ranked)."""
    ranking = results["ranking"]
    rows = {k: v for k, v in ranking["measures"].items() if "error" not in v}
    names = list(rows)
    fig, (ax, best_ax, worst_ax) = new_figure(1, 3)
    y = np.arange(len(names))
    plotted: dict[str, Any] = {"measures": names, "critical": None, "tau": {}}
    critical = (ranking.get("mde") or {}).get("critical")
    if critical is not None:
        ax.axvspan(-critical, critical, color="0.85", label=f"|τ| < {critical:.2f}: undetectable")
        plotted["critical"] = critical
    for i, (target, label) in enumerate((("gap", "vs gap"), ("test_error", "vs test error"))):
        tau = np.array([_num(rows[n][target]["tau"]) for n in names])
        lo = np.array([_num(rows[n][target]["interval"][0]) for n in names])
        hi = np.array([_num(rows[n][target]["interval"][1]) for n in names])
        offset = (i - 0.5) * 0.3
        # a percentile interval need not contain the point estimate: drawn as a segment, not as ± errors
        ax.hlines(y + offset, lo, hi, color=color(i), lw=1.2)
        ax.plot(tau, y + offset, "o", ms=3, color=color(i), label=label)
        plotted["tau"][target] = {"tau": tau.tolist(), "low": lo.tolist(), "high": hi.tolist()}
    ax.axvline(0.0, color="0.3", lw=0.6)
    ax.set_yticks(y, names, fontsize=6)
    ax.set_xlim(-1.05, 1.05)
    label_axes(ax, "Kendall's τ_b (95% bootstrap interval)", "", title="rank correlation per measure")
    legend(ax)
    included = [m for m in results["models"] if m.get("reached_stop", True)]  # records without it: all ranked
    gap = np.array([_num(m["gap_acc"]) for m in included])
    plotted["runs"] = [str(m.get("name", i)) for i, m in enumerate(included)]
    if names:
        defined = [n for n in names if np.isfinite(_num(rows[n]["gap"]["tau"]))] or names
        order = sorted(defined, key=lambda n: _num(rows[n]["gap"]["tau"]))
        for panel, name in ((best_ax, order[-1]), (worst_ax, order[0])):
            values = np.array([measure_value(m["measures"][name], name) for m in included])
            panel.scatter(values, 100 * gap, s=12, color=color(2))
            if (values > 0).all() and values.max() > 10 * values.min():
                panel.set_xscale("log")
            t = _num(rows[name]["gap"]["tau"])
            label_axes(panel, name, "gap (train − test accuracy, points)", title=f"{name}: τ = {t:+.2f}")
            plotted[f"scatter:{name}"] = {"value": values.tolist(), "gap": gap.tolist()}
    return fig, plotted
