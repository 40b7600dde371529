"""The figure of the ``escape-a3`` study: SA against each arm at equal training loss, over bad minimizers.

:func:`draw_a3` has two rows of three panels. Top: the readings of tr(H) (± its Hutch++ stderr), of the
exact Jacobian trace and of test accuracy (its 95% Wilson interval on the test set,
:func:`~sharpscope.plots.intervals.wilson_interval`) of SA and of each
arm at their matched point, one marker per bad minimizer, a grey line joining the two readings from
one minimizer. Bottom: SA − arm for the same three quantities
(tr(H) from the probes both models share), each minimizer's difference and the mean with its 95% interval
over minimizers (the study's paired interval, with the estimator and paired test-set errors).
:func:`a3_data` reads the plotted numbers from the study's results; :func:`draw_a3` draws them alone (a
figure's JSON, ``sharpscope plot --from-figure``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from sharpscope.io.readings import Pair, PairedComparison, Reading
from sharpscope.io.records import as_number
from sharpscope.plots.intervals import wilson_interval
from sharpscope.plots.style import color, label_axes, legend, new_figure

QUANTITIES = (("trace", "tr(H)"), ("jacobian_trace", "Jacobian trace"), ("test_acc", "test accuracy (%)"))
DIFFERENCE = {"trace": "trace_paired"}  # tr(H) differences from the shared Hutchinson probes
NAMES = {"rs": "RS", "twin": "SA ρ = 0", "sgd-lrp": "SGD at η′", "sgd": "SGD at η"}
MARKERS = ("o", "s")  # of each pair's two readings, SA first


def _error(reading: Reading, quantity: str) -> tuple[float, float]:
    """One reading's error bar below and above it: ± the Hutch++ stderr of tr(H); the 95% Wilson interval of
    test accuracy (in points); none for the exact Jacobian trace."""
    if quantity == "trace":
        se = as_number(reading.trace_stderr)
        return se, se
    if quantity == "test_acc":
        p, n = as_number(reading.test_acc), reading.test_examples or 0
        if not (n and 0 <= p <= 1):
            return math.nan, math.nan
        low, high = wilson_interval(p, n)
        return 100 * (p - float(low)), 100 * (float(high) - p)
    return 0.0, 0.0


def a3_data(results: Mapping[str, Any]) -> dict[str, Any]:
    """The plotted numbers from the study's ``results`` (``comparisons``): the compared ``arms``; per quantity
    and arm, ``readings`` (per minimizer, SA's row then the arm's: ``minimizer``, ``who``, ``value``, ``error``
    below and above, ``loss``) and ``differences`` (SA − arm ``per_minimizer``, the mean ``difference``, its 95%
    ``interval`` and ``verdict``); test accuracy in percent."""
    comparisons = results["comparisons"]
    arms = [a for a in NAMES if a in comparisons]
    plotted: dict[str, Any] = {"figure": "a3-matched", "arms": arms, "readings": {}, "differences": {}}
    for quantity, _ in QUANTITIES:
        scale = 100.0 if quantity == "test_acc" else 1.0
        plotted["readings"][quantity], plotted["differences"][quantity] = {}, {}
        for arm in arms:
            pairs = [Pair.from_dict(p) for p in comparisons[arm]["pairs"]]
            plotted["readings"][quantity][arm] = [
                {"minimizer": j, "who": who, "value": scale * as_number(getattr(r, quantity)),
                 "error": list(_error(r, quantity)), "loss": as_number(r.train_loss)}
                for j, pair in enumerate(pairs) for who, r in (("SA", pair.sa), (NAMES[arm], pair.arm))]
            cmp = PairedComparison.from_dict(comparisons[arm][DIFFERENCE.get(quantity, quantity)])
            plotted["differences"][quantity][arm] = {
                "per_minimizer": [scale * as_number(v) for v in cmp.per_minimizer],
                "difference": scale * as_number(cmp.difference), "interval": [scale * as_number(v) for v in cmp.interval],
                "verdict": cmp.verdict}
    return plotted


def draw_a3(data: Mapping[str, Any]) -> Figure:
    """The two rows of panels of the module docstring from :func:`a3_data`'s plotted numbers alone; the bottom
    panels' dots of each arm's per-minimizer differences carry the gid ``per_minimizer``."""
    arms = list(data["arms"])
    fig, axes = new_figure(2, 3)
    for col, (quantity, label) in enumerate(QUANTITIES):
        top, bottom = axes[col], axes[3 + col]
        for i, arm in enumerate(arms):
            rows = data["readings"][quantity][arm]
            for sa, other in zip(rows[0::2], rows[1::2], strict=True):
                j = int(sa["minimizer"])
                xs = [i + (k - 0.5) * 0.35 + (j - 1) * 0.06 for k in range(len(MARKERS))]
                # one minimizer: SA and the arm, paired
                top.plot(xs, [as_number(sa["value"]), as_number(other["value"])], color="0.7", lw=0.7)
                for k, (row, marker) in enumerate(zip((sa, other), MARKERS, strict=True)):
                    err = [as_number(e) for e in row["error"]]
                    top.errorbar([xs[k]], [as_number(row["value"])],
                                 yerr=[[err[0]], [err[1]]] if all(map(math.isfinite, err)) else None, fmt=marker,
                                 color=color(0 if k == 0 else i + 1), ms=4, capsize=2,
                                 label=row["who"] if (j == 0 and (k == 1 or i == 0)) else None)
            diff = data["differences"][quantity][arm]
            per = [as_number(v) for v in diff["per_minimizer"]]
            est, (lo, hi) = as_number(diff["difference"]), (as_number(v) for v in diff["interval"])
            dots = bottom.scatter([i + (j - 1) * 0.08 for j in range(len(per))], per, color=color(i + 1), s=12,
                                  alpha=0.7)
            dots.set_gid("per_minimizer")
            if math.isfinite(lo) and math.isfinite(hi):
                bottom.errorbar([i + 0.3], [est], yerr=[[est - lo], [hi - est]], fmt="D", color="k", ms=4, capsize=3)
            else:
                bottom.scatter([i + 0.3], [est], marker="D", color="k", s=14)
        for ax in (top, bottom):
            ax.set_xticks(np.arange(len(arms)), [f"vs {NAMES[a]}" for a in arms], fontsize=7)
        bottom.axhline(0.0, color="0.5", lw=0.8)
        label_axes(top, "", label, title=f"{label} at equal loss")
        unit = {"test_acc": "points", "trace": "tr(H), shared probes"}.get(quantity, label)
        label_axes(bottom, "", f"SA − arm ({unit})",
                   title="per minimizer; mean with 95% interval")
        if col == 0:
            legend(top, inside=1)
    return fig
