"""The intervals figures draw: Wilson bars on every test-accuracy panel, seed intervals, redrawing from JSON."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
from matplotlib.axes import Axes
from scipy import stats

from sharpscope.plots.arms import ArmRun, arms_figure, matched_loss
from sharpscope.plots.intervals import ERRORBAR_GID, has_accuracy_errorbars, seed_interval, wilson_interval
from sharpscope.plots.runs import load_run

FIGURES = Path(__file__).resolve().parents[2] / "figures"
Z = 1.959963984540054  # the two-sided 95% normal quantile


def wilson_from_counts(x: int, n: int) -> tuple[float, float]:
    """The Wilson interval in its count form: (x + z²/2 ± z·sqrt(x(n − x)/n + z²/4)) / (n + z²)."""
    half = Z * math.sqrt(x * (n - x) / n + Z * Z / 4)
    return (x + Z * Z / 2 - half) / (n + Z * Z), (x + Z * Z / 2 + half) / (n + Z * Z)


@pytest.mark.parametrize(("x", "n"), [(556, 2000), (0, 10), (10, 10), (50, 100)])
def test_wilson_interval_matches_the_count_form(x: int, n: int) -> None:
    low, high = wilson_interval([x / n], n)
    exp_low, exp_high = wilson_from_counts(x, n)
    assert low[0] == pytest.approx(exp_low, abs=1e-12) and high[0] == pytest.approx(exp_high, abs=1e-12)
    assert -1e-12 <= low[0] <= x / n + 1e-12 and x / n - 1e-12 <= high[0] <= 1.0 + 1e-12


def test_wilson_interval_known_values_and_bad_size() -> None:
    assert wilson_interval([0.0], 10)[1][0] == pytest.approx(Z * Z / (10 + Z * Z))  # x = 0: upper z²/(n + z²)
    low, high = wilson_interval([0.278], 2000)
    assert (high[0] - low[0]) / 2 == pytest.approx(0.0196, abs=2e-4)  # about ±2 points on 2 000 images
    with pytest.raises(ValueError, match="test-set size must be positive"):
        wilson_interval([0.5], 0)


def test_seed_interval_is_the_student_t_interval() -> None:
    rows = np.array([[1.0, 10.0, 5.0], [2.0, 12.0, math.nan], [4.0, 11.0, math.nan]])
    mean, low, high = seed_interval(rows)
    for j in range(2):
        col = rows[:, j]
        lo, hi = stats.t.interval(0.95, len(col) - 1, loc=col.mean(), scale=stats.sem(col))
        assert mean[j] == pytest.approx(col.mean()) and low[j] == pytest.approx(lo) and high[j] == pytest.approx(hi)
    assert mean[2] == 5.0 and math.isnan(low[2]) and math.isnan(high[2])  # one seed: no interval


def accuracy_axes(fig) -> list[Axes]:  # noqa: ANN001 - a matplotlib Figure
    return [ax for ax in fig.axes if "test accuracy" in ax.get_ylabel()]


def bars_fit(ax: Axes) -> None:
    """Every Wilson bar lies inside the axis: the axis is never narrower than its error bars."""
    low, high = ax.get_ylim()
    for c in ax.containers:
        for bars in c.lines[2]:
            if bars.get_gid() == ERRORBAR_GID:
                ys = np.concatenate([seg[:, 1] for seg in bars.get_segments()])
                assert low <= ys.min() + 1e-12 and ys.max() <= high + 1e-12


def test_arms_figure_of_smoke_runs_draws_wilson_bars_and_seed_intervals(run_dirs: dict[str, Path]) -> None:
    run = load_run(run_dirs["momentum"])
    n = run.summary.test_examples
    seeds = [dataclasses.replace(run, label=f"sgd-s{i}") for i in range(2)]
    fig = arms_figure([*seeds, dataclasses.replace(run, label="sam-s0")])
    (ax,) = accuracy_axes(fig)
    assert has_accuracy_errorbars(ax)
    bars_fit(ax)
    acc = np.array([m.test_acc for m in run.measurements], dtype=float)
    first = next(c for c in ax.containers)
    segments = first.lines[2][0].get_segments()
    expected_low, expected_high = wilson_interval(acc, n)
    np.testing.assert_allclose([s[0, 1] for s in segments], expected_low)
    np.testing.assert_allclose([s[1, 1] for s in segments], expected_high)


def _stored_run(label: str, loss: list[float], trace: list[float], lam: float) -> dict:
    """A run of an arms figure as stored, accuracies constant."""
    ones = np.ones(len(loss))
    return ArmRun(label, None, trace=np.array(trace), lambda_max=lam * ones, loss=np.array(loss), test_acc=0.5 * ones,
                  train_acc=ones).to_dict()


def test_matched_loss_readout_reads_every_seed_at_common_levels() -> None:
    loss = [1.0, 0.5, 0.25, 0.125]
    arms = [{"arm": "a", "per_run": [_stored_run("a-s0", loss, [8.0, 4.0, 2.0, 1.0], 1.0),
                                     _stored_run("a-s1", loss, [10.0, 6.0, 4.0, 3.0], 2.0)]},
            {"arm": "b", "per_run": [_stored_run("b-s0", loss[:3], [1.0, 1.0, 1.0], 3.0)]}]
    out = matched_loss(arms, num=3)
    assert out["levels"] == pytest.approx([1.0, 0.5, 0.25])  # down to the lowest loss every run reaches
    a = out["arms"]["a"]["trace"]
    np.testing.assert_allclose(a["mean"], [9.0, 5.0, 3.0])
    lo, hi = stats.t.interval(0.95, 1, loc=3.0, scale=stats.sem([2.0, 4.0]))
    assert a["low"][2] == pytest.approx(lo) and a["high"][2] == pytest.approx(hi)
    assert math.isnan(out["arms"]["b"]["trace"]["low"][0])  # one seed: no interval


def test_an_arm_run_reads_back_as_stored(run_dirs: dict[str, Path]) -> None:
    """A run's series stored in a figure's JSON and read back: the same numbers under the same names."""
    from sharpscope.io import jsonsafe
    from sharpscope.plots.runs import load_run, series

    run = load_run(run_dirs["sam"])
    stored = ArmRun.of(run).to_dict()
    assert list(stored) == ["label", "diverged_at_step", "trace", "lambda_max", "loss", "test_acc", "train_acc"]
    assert stored["label"] == run.label and stored["diverged_at_step"] == run.diverged_at
    np.testing.assert_array_equal(stored["trace"], series(run, "trace.estimate")[1])
    again = ArmRun.from_dict(jsonsafe.loads(jsonsafe.dumps(stored)))
    assert jsonsafe.dumps(again.to_dict()) == jsonsafe.dumps(stored)
    with pytest.raises(KeyError):
        again.column("label")


def committed_accuracy_figures() -> list[Path]:
    out = []
    for path in sorted(FIGURES.glob("*.json")):
        plot = (json.loads(path.read_text()).get("data") or {})
        plot = plot.get("plot", plot) if isinstance(plot, dict) else {}
        if isinstance(plot, dict) and plot.get("figure") in ("arms", "trace_accuracy", "escape"):
            out.append(path)
    return out


@pytest.mark.parametrize("path", committed_accuracy_figures(), ids=lambda p: p.stem)
def test_every_committed_test_accuracy_panel_has_wilson_bars(path: Path) -> None:
    from sharpscope.experiments.figures import figure_from_json

    fig, _, caption = figure_from_json(path)
    axes = accuracy_axes(fig)
    assert axes, f"{path.name}: no test-accuracy panel"
    for ax in axes:
        assert has_accuracy_errorbars(ax), f"{path.name}: a test-accuracy panel without its binomial bars"
        bars_fit(ax)
    assert caption and "Wilson" in caption
