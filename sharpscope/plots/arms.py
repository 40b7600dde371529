"""Figures of arms over seeds: runs named ``<arm>-s<seed>`` are one arm, drawn as the mean over its seeds
with the 95% Student-t interval of that mean (:func:`~sharpscope.plots.intervals.seed_interval`; none for an
arm of one seed).

:func:`arms_figure` has four panels: tr(H) (or λ_max) against step; the matched-loss readout, each arm's
tr(H) (or λ_max) read at training-loss levels every run reaches (mean and 95% interval over seeds at each
level; the same levels and interpolation as the studies' criteria,
:func:`~sharpscope.io.series.common_loss_levels`, so the lowest level is the reading the
verdicts compare: near zero loss the cross-entropy curvature scales with the loss, and arms are compared at
equal loss); test accuracy against step with the 95% Wilson bar of the test-set size at every point
(:func:`~sharpscope.plots.intervals.accuracy_errorbars`) beside the seed interval; and train accuracy
(probe set) against step. A run that diverged is marked ✕ at the step its loss became non-finite. Arms are
aligned by measurement index (the seeds of an arm measure at the same steps). :func:`draw_arms` draws the
figure from :func:`arms_data`'s numbers alone (as stored in a figure's JSON).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from sharpscope.io.series import common_loss_levels, interpolate_at_loss
from sharpscope.plots.intervals import accuracy_errorbars, seed_interval
from sharpscope.plots.runs import RunData, RunLike, as_runs, series
from sharpscope.plots.style import color, figure_legend, label_axes, log_axis, new_figure

_SEED = re.compile(r"^(?P<arm>.+)-s(?P<seed>\d+)$")
_KEYS = {"trace": "trace.estimate", "lambda_max": "eigenvalues.0", "loss": "train_loss", "test_acc": "test_acc",
         "train_acc": "train_acc"}
_NAMES = {"trace": "trace tr(H)", "lambda_max": "sharpness λ_max"}
LEVELS = 4  # matched-loss levels, as in the studies' criteria


def _arm(label: str) -> str:
    m = _SEED.match(label)
    return m.group("arm") if m else label


def _stack(rows: list[Any]) -> np.ndarray:
    rows = [np.asarray(r, dtype=float) for r in rows]
    n = max(len(r) for r in rows)
    out = np.full((len(rows), n), np.nan)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


@dataclass(frozen=True, eq=False)
class ArmRun:
    """One run of an arm as an arms figure stores it (an entry of ``per_run``): its label, the step it diverged
    at (None) and its series of tr(H), λ_max, training loss, test and train accuracy (NaN where missing)."""

    label: str
    diverged_at_step: int | None
    trace: np.ndarray
    lambda_max: np.ndarray
    loss: np.ndarray
    test_acc: np.ndarray
    train_acc: np.ndarray

    @classmethod
    def of(cls, run: RunData) -> ArmRun:
        """The series of a loaded run."""
        return cls(run.label, run.diverged_at, **{k: series(run, key)[1] for k, key in _KEYS.items()})

    @classmethod
    def from_dict(cls, stored: Mapping[str, Any]) -> ArmRun:
        """The run stored by :meth:`to_dict` (series as float arrays)."""
        return cls(str(stored["label"]), stored["diverged_at_step"],
                   **{k: np.asarray(stored[k], dtype=float) for k in _KEYS})

    def to_dict(self) -> dict[str, Any]:
        """``{"label", "diverged_at_step", "trace", "lambda_max", "loss", "test_acc", "train_acc"}``."""
        return {"label": self.label, "diverged_at_step": self.diverged_at_step, **{k: self.column(k) for k in _KEYS}}

    def column(self, quantity: str) -> np.ndarray:
        """The series of ``quantity``, one of ``trace``, ``lambda_max``, ``loss``, ``test_acc``, ``train_acc``."""
        if quantity not in _KEYS:
            raise KeyError(f"no series {quantity!r}: one of {', '.join(_KEYS)}")
        return np.asarray(getattr(self, quantity))


def _runs(item: Mapping[str, Any]) -> list[ArmRun]:
    return [ArmRun.from_dict(p) for p in item["per_run"]]


def test_set_size(run: RunData) -> int | None:
    """The size of the test set a run's test accuracy is counted on (its summary's ``data.test.examples``)."""
    n = None if run.summary is None else run.summary.test_examples
    return int(n) if isinstance(n, (int, float)) and n > 0 else None


def arms_data(runs: RunLike | Sequence[RunLike], *, labels: Sequence[str] | None = None) -> dict[str, Any]:
    """Per arm: its runs, the steps, the test-set size ``test_examples`` and, per run, the raw series and
    the step it diverged at (None); the intervals and the matched-loss readout are derived from these by
    :func:`arm_intervals` and :func:`matched_loss` when drawn, and stored beside them."""
    loaded = as_runs(runs, labels)
    groups: dict[str, list[RunData]] = {}
    for run in loaded:
        groups.setdefault(_arm(run.label), []).append(run)
    arms = []
    for name, members in groups.items():
        item: dict[str, Any] = {"arm": name, "runs": [r.label for r in members], "seeds": len(members)}
        steps = [series(r, "step")[1] for r in members]
        item["steps"] = max(steps, key=len)
        item["test_examples"] = next((n for n in map(test_set_size, members) if n), None)
        item["per_run"] = [ArmRun.of(r).to_dict() for r in members]
        arms.append(item)
    data = {"figure": "arms", "arms": arms}
    return {**data, **derived_arms(data)}


def derived_arms(data: Mapping[str, Any]) -> dict[str, Any]:
    """The numbers :func:`draw_arms` derives from the per-run series: per arm, for every quantity,
    ``{"mean", "low", "high"}`` (:func:`~sharpscope.plots.intervals.seed_interval`), and ``matched_loss``."""
    arms = [{**item, **arm_intervals(item)} for item in data["arms"]]
    return {"arms": arms, "matched_loss": matched_loss(arms)}


def arm_intervals(item: Mapping[str, Any]) -> dict[str, Any]:
    """``{quantity: {"mean", "low", "high"}}`` over the seeds of one arm (NaN bounds for one seed)."""
    out = {}
    for k in _KEYS:
        mean, low, high = seed_interval(_stack([r.column(k) for r in _runs(item)]))
        out[k] = {"mean": mean, "low": low, "high": high}
    return out


def matched_loss(arms: Sequence[Mapping[str, Any]], num: int = LEVELS) -> dict[str, Any]:
    """``{"levels", "arms": {arm: {quantity: {"mean", "low", "high", "values"}}}}``: tr(H) and λ_max of each run
    read at ``num`` training-loss levels that every run of every arm reaches (log-linear interpolation, the
    criteria's :func:`~sharpscope.io.series.interpolate_at_loss`), mean and 95% interval over seeds."""
    runs = [_runs(item) for item in arms]
    levels = common_loss_levels([list(map(float, r.loss)) for rs in runs for r in rs], num=num)
    out: dict[str, Any] = {"levels": levels, "arms": {}}
    for item, rs in zip(arms, runs):
        out["arms"][item["arm"]] = {}
        for q in ("trace", "lambda_max"):
            values = np.array([interpolate_at_loss(list(map(float, r.loss)), list(map(float, r.column(q))), levels)
                               for r in rs], dtype=float).reshape(len(rs), len(levels))
            mean, low, high = seed_interval(values) if levels else (np.array([]),) * 3
            out["arms"][item["arm"]][q] = {"mean": mean, "low": low, "high": high, "values": values}
    return out


def dodge(x: np.ndarray, i: int, count: int) -> float:
    """The shift of the ``i``-th of ``count`` arms along an axis whose points are ``x``: the arms side by side
    within a third of the smallest gap between points, so their error bars do not hide each other."""
    gaps = np.diff(np.unique(np.asarray(x, dtype=float)))
    gap = float(gaps.min()) if gaps.size else 0.05
    return 0.0 if count < 2 else gap / 3 * (i / (count - 1) - 0.5)


def _fill(ax: Any, steps: np.ndarray, stats: Mapping[str, Any], c: str, gid: str) -> None:
    """The seed interval of ``stats`` as a shaded band (nothing for an arm of one seed)."""
    low, high = (np.asarray(stats[b], dtype=float)[: len(steps)] for b in ("low", "high"))
    if np.isfinite(low).any():
        ax.fill_between(steps[: len(low)], low, high, color=c, alpha=0.18, linewidth=0).set_gid(f"{gid}_interval")


def _band(ax: Any, steps: np.ndarray, stats: Mapping[str, Any], c: str, label: str | None, gid: str) -> None:
    """The mean over seeds as a line, with its seed interval (:func:`_fill`)."""
    mean = np.asarray(stats["mean"], dtype=float)[: len(steps)]
    (line,) = ax.plot(steps[: len(mean)], mean, color=c, linewidth=1.4, marker="." if len(mean) < 30 else None,
                      markersize=3, label=label)
    line.set_gid(gid)
    _fill(ax, steps, stats, c, gid)


def arms_figure(runs: RunLike | Sequence[RunLike], *, labels: Sequence[str] | None = None,
                quantity: str = "trace") -> Figure:
    """The four panels of the module docstring; one colour per arm (legend: arm and number of seeds).
    ``quantity`` ``"lambda_max"`` draws λ_max (log axis) where tr(H) is drawn by default."""
    return draw_arms(arms_data(runs, labels=labels), quantity=quantity)


def draw_arms(data: Mapping[str, Any], *, quantity: str = "trace") -> Figure:
    """:func:`arms_figure` from the numbers of :func:`arms_data` (intervals and matched-loss readout derived
    again from the per-run series, so data stored before they were kept draw the same)."""
    if quantity not in _NAMES:
        raise ValueError(f"quantity must be one of {', '.join(_NAMES)}, got {quantity!r}")
    data = {**data, **derived_arms(data)}
    fig, axes = new_figure(2, 2)
    items, levels = data["arms"], data["matched_loss"]["levels"]
    for i, item in enumerate(items):
        c, steps = color(i), np.asarray(item["steps"], dtype=float)
        name = f"{item['arm']} ({item['seeds']} seed{'s' if item['seeds'] > 1 else ''})"
        _band(axes[0], steps, item[quantity], c, name, quantity)
        n_test = item.get("test_examples")
        accuracy_errorbars(axes[2], steps[: len(item["test_acc"]["mean"])], item["test_acc"]["mean"], n_test,
                           shift=dodge(steps, i, len(items)), color=c, linewidth=1.4, marker=".", markersize=3)
        _fill(axes[2], steps, item["test_acc"], c, "test_acc")
        _band(axes[3], steps, item["train_acc"], c, None, "train_acc")
        if levels:
            read = data["matched_loss"]["arms"][item["arm"]][quantity]
            x = np.asarray(levels) * np.exp(dodge(np.log(levels), i, len(items)))  # arms side by side
            mean = np.asarray(read["mean"], dtype=float)
            low, high = (np.asarray(read[b], dtype=float) for b in ("low", "high"))
            err = np.vstack([np.where(np.isfinite(low), mean - low, 0.0), np.where(np.isfinite(high), high - mean, 0.0)])
            cont = axes[1].errorbar(x, mean, yerr=err, color=c, marker="o", markersize=3.5, linewidth=1.0, capsize=2.0)
            cont.lines[0].set_gid(f"{quantity}_at_matched_loss")
        for run in _runs(item):
            at = run.diverged_at_step
            if at is not None:
                for ax in (axes[0], axes[2], axes[3]):
                    y = np.nanmax(np.asarray(item[quantity]["mean"], dtype=float)) if ax is axes[0] else 0.0
                    ax.plot([at], [y], marker="x", color=c, markersize=8, linestyle="none",
                            label=f"{run.label} diverged")
    label_axes(axes[0], "step", _NAMES[quantity])
    if quantity == "trace" and axes[0].get_ylim()[0] < 0:  # tr(H) ≥ 0 near a minimum: the interval runs on below
        axes[0].set_ylim(bottom=0.0)
    if levels:
        if len(levels) == 1:  # one common level (often the shared start): a factor 2 either side
            axes[1].set_xlim(levels[0] / 2.0, levels[0] * 2.0)
        log_axis(axes[1], "x")
        axes[1].invert_xaxis()
        if quantity == "lambda_max":
            log_axis(axes[1], "y")
        label_axes(axes[1], "training loss level L (probe set)", f"{_NAMES[quantity]} at loss L",
                   title="at matched training loss (lowest level: the verdicts' reading)")
    else:
        axes[1].text(0.5, 0.5, "no training-loss level that every run reaches", ha="center", va="center",
                     transform=axes[1].transAxes, fontsize=7)
    if quantity == "lambda_max":
        means = np.concatenate([np.asarray(item[quantity]["mean"], dtype=float) for item in items])
        positive = means[np.isfinite(means) & (means > 0)]
        if positive.size:  # an interval reaching to 0 or below runs off the log axis: keep the means in view
            axes[0].set_ylim(bottom=max(axes[0].get_ylim()[0], positive.min() / 3))
        log_axis(axes[0], "y")
    label_axes(axes[2], "step", "test accuracy")
    axes[3].yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    bottom, top = axes[3].get_ylim()
    axes[3].set_ylim(max(bottom, 0.0), min(top, 1.0 + 0.02 * (1.0 - max(bottom, 0.0))))
    label_axes(axes[3], "step", "train accuracy (probe set)")
    figure_legend(fig, axes[0])
    return fig


def matched_loss_facts(data: Mapping[str, Any], quantity: str = "trace") -> str:
    """The matched-loss readout at the lowest common level in words: each arm's mean and 95% interval."""
    derived = derived_arms(data)["matched_loss"]
    if not derived["levels"]:
        return "No training-loss level is reached by every run: no matched-loss readout."
    name = {"trace": "tr(H)", "lambda_max": "λ_max"}[quantity]
    parts = []
    for arm, read in derived["arms"].items():
        mean, low, high = (float(np.asarray(read[quantity][k], dtype=float)[-1]) for k in ("mean", "low", "high"))
        parts.append(f"{arm} {mean:.3g}" + (f" [{low:.3g}, {high:.3g}]" if np.isfinite(low) else " (one seed)"))
    return f"{name} at the lowest common training loss L = {derived['levels'][-1]:.3g}: {', '.join(parts)}."
