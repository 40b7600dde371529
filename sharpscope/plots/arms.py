"""Figures of arms over seeds: runs named ``<arm>-s<seed>`` are one arm, drawn as the mean over its seeds
with a ± one-standard-deviation band.

:func:`arms_figure` has four panels: tr(H) against step, tr(H) against the training loss (every run
its own line, log axes: near zero loss the cross-entropy curvature scales with the loss, so arms are
compared at equal loss here), test accuracy against step, and train accuracy against step. Accuracy
axes stop at 100%. A run that diverged is marked ✕ at the step its loss became non-finite. Arms are
aligned by measurement index (the seeds of an arm measure at the same steps).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from sharpscope.plots.runs import RunData, RunLike, as_runs, series
from sharpscope.plots.style import color, label_axes, legend, new_figure

_SEED = re.compile(r"^(?P<arm>.+)-s(?P<seed>\d+)$")
_KEYS = {"trace": "trace.estimate", "lambda_max": "eigenvalues.0", "loss": "train_loss", "test_acc": "test_acc",
         "train_acc": "train_acc"}
_NAMES = {"trace": "trace tr(H)", "lambda_max": "sharpness λ_max"}


def _arm(label: str) -> str:
    m = _SEED.match(label)
    return m.group("arm") if m else label


def _stack(rows: list[np.ndarray]) -> np.ndarray:
    n = max(len(r) for r in rows)
    out = np.full((len(rows), n), np.nan)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def _nan_stats(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    counts = np.isfinite(a).sum(0)
    total = np.where(np.isfinite(a), a, 0.0).sum(0)
    mean = np.where(counts > 0, total / np.maximum(counts, 1), np.nan)
    dev = np.where(np.isfinite(a), a - mean, 0.0)
    std = np.where(counts > 1, np.sqrt((dev**2).sum(0) / np.maximum(counts - 1, 1)), 0.0)
    return mean, std


def arms_data(runs: RunLike | Sequence[RunLike], *, labels: Sequence[str] | None = None) -> dict[str, Any]:
    """Per arm: its runs, the steps, and mean/std over seeds of tr(H), loss, test and train accuracy; per run
    the raw series and the step it diverged at (None)."""
    loaded = as_runs(runs, labels)
    groups: dict[str, list[RunData]] = {}
    for run in loaded:
        groups.setdefault(_arm(run.label), []).append(run)
    arms = []
    for name, members in groups.items():
        item: dict[str, Any] = {"arm": name, "runs": [r.label for r in members], "seeds": len(members)}
        steps = [series(r, "step")[1] for r in members]
        item["steps"] = max(steps, key=len)
        per_run: list[dict[str, Any]] = []
        for r in members:
            per_run.append({"label": r.label, "diverged_at_step": r.diverged_at,
                            **{k: series(r, key)[1] for k, key in _KEYS.items()}})
        for k in _KEYS:
            mean, std = _nan_stats(_stack([p[k] for p in per_run]))
            item[k] = {"mean": mean, "std": std}
        item["per_run"] = per_run
        arms.append(item)
    return {"figure": "arms", "arms": arms}


def _band(ax: Axes, steps: np.ndarray, stats: dict[str, np.ndarray], c: str, label: str, gid: str) -> None:
    mean, std = stats["mean"][: len(steps)], stats["std"][: len(steps)]
    (line,) = ax.plot(steps[: len(mean)], mean, color=c, linewidth=1.4, marker="." if len(mean) < 30 else None,
                      markersize=3, label=label)
    line.set_gid(gid)
    ax.fill_between(steps[: len(mean)], mean - std, mean + std, color=c, alpha=0.2, linewidth=0)


def arms_figure(runs: RunLike | Sequence[RunLike], *, labels: Sequence[str] | None = None,
                quantity: str = "trace") -> Figure:
    """The four panels of the module docstring; one colour per arm (legend: arm and number of seeds).
    ``quantity`` ``"lambda_max"`` draws λ_max (log axis) where tr(H) is drawn by default."""
    if quantity not in _NAMES:
        raise ValueError(f"quantity must be one of {', '.join(_NAMES)}, got {quantity!r}")
    data = arms_data(runs, labels=labels)
    fig, axes = new_figure(2, 2)
    for i, item in enumerate(data["arms"]):
        c, steps = color(i), np.asarray(item["steps"], dtype=float)
        name = f"{item['arm']} ({item['seeds']} seed{'s' if item['seeds'] > 1 else ''})"
        _band(axes[0], steps, item[quantity], c, name, quantity)
        _band(axes[2], steps, item["test_acc"], c, name, "test_acc")
        _band(axes[3], steps, item["train_acc"], c, name, "train_acc")
        for j, run in enumerate(item["per_run"]):
            ok = np.isfinite(run["loss"]) & np.isfinite(run[quantity]) & (run["loss"] > 0)
            (line,) = axes[1].plot(run["loss"][ok], run[quantity][ok], color=c, linewidth=1.0, alpha=0.8,
                                   marker=".", markersize=3, label=name if j == 0 else None)
            line.set_gid(f"{quantity}_vs_loss")
            at = run["diverged_at_step"]
            if at is not None:
                for ax in (axes[0], axes[2], axes[3]):
                    ax.plot([at], [np.nanmax(item[quantity]["mean"]) if ax is axes[0] else 0.0], marker="x",
                            color=c, markersize=8, linestyle="none", label=f"{run['label']} diverged")
    label_axes(axes[0], "step", _NAMES[quantity])
    label_axes(axes[1], "training loss L (probe set)", _NAMES[quantity])
    if quantity == "lambda_max":
        axes[0].set_yscale("log")
    axes[1].set_xscale("log")
    axes[1].set_yscale("log")
    axes[1].invert_xaxis()
    for ax, what in ((axes[2], "test accuracy"), (axes[3], "train accuracy")):
        ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
        low, high = ax.get_ylim()
        ax.set_ylim(max(low, 0.0), min(high, 1.0) if high > 1.0 else high)
        label_axes(ax, "step", what)
    legend(axes[0])
    legend(axes[1])
    return fig
