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
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from sharpscope.io.jsonsafe import as_number
from sharpscope.io.readings import A3Results, ModelReading, PairedComparison, StoredRecord
from sharpscope.plots.intervals import wilson_interval
from sharpscope.plots.style import color, label_axes, legend, new_figure

QUANTITIES = (("trace", "tr(H)"), ("jacobian_trace", "Jacobian trace"), ("test_acc", "test accuracy (%)"))
DIFFERENCE = {"trace": "trace_paired"}  # tr(H) differences from the shared Hutchinson probes
NAMES = {"rs": "RS", "twin": "SA ρ = 0", "sgd-lrp": "SGD at η′", "sgd": "SGD at η"}
MARKERS = ("o", "s")  # of each pair's two readings, SA first


@dataclass(frozen=True)
class MatchedReading(StoredRecord):
    """One plotted reading of a pair: from bad ``minimizer`` j, ``who`` (SA or the arm), its ``value``, the
    ``error`` below and above it and its training ``loss``."""

    minimizer: int
    who: str
    value: float
    error: list[float]
    loss: float


@dataclass(frozen=True)
class Difference(StoredRecord):
    """SA − an arm plotted: the ``per_minimizer`` differences, their mean ``difference``, its 95% ``interval`` and
    the ``verdict``."""

    per_minimizer: list[float]
    difference: float
    interval: list[float]
    verdict: str


@dataclass(frozen=True)
class A3Figure(StoredRecord):
    """The plotted numbers of :func:`draw_a3` (``figure`` names it): the compared ``arms`` and, per quantity and
    arm, the ``readings`` (per minimizer, SA's then the arm's) and the ``differences``."""

    figure: str
    arms: list[str]
    readings: dict[str, dict[str, list[MatchedReading]]]
    differences: dict[str, dict[str, Difference]]


def _error(reading: ModelReading, quantity: str) -> tuple[float, float]:
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


def _scale(quantity: str) -> float:
    return 100.0 if quantity == "test_acc" else 1.0


def _difference(cmp: PairedComparison, quantity: str) -> Difference:
    scale = _scale(quantity)
    return Difference([scale * as_number(v) for v in cmp.per_minimizer], scale * as_number(cmp.difference),
                      [scale * as_number(v) for v in cmp.interval], cmp.verdict)


def a3_data(results: Mapping[str, Any]) -> dict[str, Any]:
    """The stored :class:`A3Figure` of the study's ``results`` (:class:`~sharpscope.io.readings.A3Results`): the
    compared arms' readings at their matched points and SA − arm; test accuracy in percent."""
    comparisons = A3Results.from_dict(results).comparisons
    arms = [a for a in NAMES if a in comparisons]
    readings = {quantity: {arm: [
        MatchedReading(j, who, _scale(quantity) * as_number(getattr(r, quantity)), list(_error(r, quantity)),
                       as_number(r.train_loss))
        for j, pair in enumerate(comparisons[arm].pairs or []) for who, r in (("SA", pair.sa), (NAMES[arm], pair.arm))]
        for arm in arms} for quantity, _ in QUANTITIES}
    differences = {quantity: {arm: _difference(comparisons[arm].judged[DIFFERENCE.get(quantity, quantity)], quantity)
                              for arm in arms} for quantity, _ in QUANTITIES}
    return A3Figure("a3-matched", arms, readings, differences).to_dict()


def draw_a3(data: Mapping[str, Any]) -> Figure:
    """The two rows of panels of the module docstring from :func:`a3_data`'s plotted numbers alone; the bottom
    panels' dots of each arm's per-minimizer differences carry the gid ``per_minimizer``."""
    plotted = A3Figure.from_dict(data)
    arms = plotted.arms
    fig, axes = new_figure(2, 3)
    for col, (quantity, label) in enumerate(QUANTITIES):
        top, bottom = axes[col], axes[3 + col]
        for i, arm in enumerate(arms):
            rows = plotted.readings[quantity][arm]
            for sa, other in zip(rows[0::2], rows[1::2], strict=True):
                j = sa.minimizer
                xs = [i + (k - 0.5) * 0.35 + (j - 1) * 0.06 for k in range(len(MARKERS))]
                # one minimizer: SA and the arm, paired
                top.plot(xs, [sa.value, other.value], color="0.7", lw=0.7)
                for k, (row, marker) in enumerate(zip((sa, other), MARKERS, strict=True)):
                    low, high = row.error
                    top.errorbar([xs[k]], [row.value],
                                 yerr=[[low], [high]] if all(map(math.isfinite, row.error)) else None, fmt=marker,
                                 color=color(0 if k == 0 else i + 1), ms=4, capsize=2,
                                 label=row.who if (j == 0 and (k == 1 or i == 0)) else None)
            diff = plotted.differences[quantity][arm]
            per, est, (lo, hi) = diff.per_minimizer, diff.difference, diff.interval
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
