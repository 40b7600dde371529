"""Trajectory figures: the plotted lines are the records, thresholds sit where the formulas put them."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
from matplotlib.axes import Axes
from matplotlib.lines import Line2D
from scipy import stats

from sharpscope.errors import ConfigError, DataError
from sharpscope.io.records import Measurement
from sharpscope.plots.intervals import has_accuracy_errorbars
from sharpscope.plots.runs import RunData, load_run
from sharpscope.plots.trajectory import (
    RATIO_BAND,
    escape_data,
    escape_figure,
    sharpness_data,
    sharpness_figure,
    spearman,
    trace_accuracy_data,
    trace_accuracy_figure,
)
from sharpscope.thresholds import adam_edge, gd_edge, momentum_edge, sam_edge


def lines(ax: Axes, gid: str) -> list[Line2D]:
    return [line for line in ax.get_lines() if line.get_gid() == gid]


def ydata(line: Line2D) -> np.ndarray:
    return np.asarray(line.get_ydata(), dtype=float)


def records(run: RunData, key: str, index: int | None = None) -> list[float]:
    out = []
    for m in run.measurements:
        v = getattr(m, key) if index is None else getattr(m, key)[index]
        out.append(float(v))
    return out


def test_gd_run_lambda_lines_and_the_2_over_eta_edge(run_dirs: dict[str, Path]) -> None:
    run = load_run(run_dirs["gd"])
    fig = sharpness_figure(run, k=2)
    ax, loss_ax = fig.axes
    (lam1,), (lam2,) = lines(ax, "lambda1"), lines(ax, "lambda2")
    np.testing.assert_array_equal(lam1.get_xdata(), [m.step for m in run.measurements])
    np.testing.assert_array_equal(ydata(lam1), records(run, "eigenvalues", 0))
    np.testing.assert_array_equal(ydata(lam2), records(run, "eigenvalues", 1))
    (edge,) = lines(ax, "edge")
    np.testing.assert_allclose(ydata(edge), gd_edge(run.config["optimizer_kwargs"]["lr"]), rtol=1e-15)
    assert lines(ax, "gd_edge") == []  # for GD the edge is 2/η itself
    assert "2/η" in [t.get_text() for t in ax.get_legend().get_texts()]
    (loss,) = lines(loss_ax, "train_loss")
    np.testing.assert_array_equal(ydata(loss), records(run, "train_loss"))
    assert loss_ax.get_yscale() == "log"
    assert len(sharpness_figure(run, loss=False).axes) == 1
    assert len(lines(sharpness_figure(run, k=5).axes[0], "lambda3")) == 0  # only two were recorded


def test_momentum_edge_with_2_over_eta_reference(run_dirs: dict[str, Path]) -> None:
    run = load_run(run_dirs["momentum"])
    lr, beta = run.config["optimizer_kwargs"]["lr"], run.config["optimizer_kwargs"]["momentum"]
    ax = sharpness_figure(run).axes[0]
    (edge,), (ref,) = lines(ax, "edge"), lines(ax, "gd_edge")
    np.testing.assert_allclose(ydata(edge), (2 + 2 * beta) / lr, rtol=1e-12)
    np.testing.assert_allclose(ydata(edge), momentum_edge(lr, beta), rtol=1e-15)
    np.testing.assert_allclose(ydata(ref), 2 / lr, rtol=1e-15)


def test_sam_edge_moves_with_the_recorded_gradient_norm(run_dirs: dict[str, Path]) -> None:
    run = load_run(run_dirs["sam"])
    lr, rho = run.config["optimizer_kwargs"]["lr"], run.config["optimizer_kwargs"]["rho"]
    ax = sharpness_figure(run).axes[0]
    (edge,) = lines(ax, "edge")
    expected = [sam_edge(lr, rho, g) for g in records(run, "grad_norm")]
    np.testing.assert_allclose(ydata(edge), expected, rtol=1e-12)
    assert np.ptp(expected) > 0.1 * max(expected)  # it really moves between measurements
    np.testing.assert_allclose(ydata(lines(ax, "gd_edge")[0]), 2 / lr, rtol=1e-15)
    assert any("SAM-edge" in t.get_text() for t in ax.get_legend().get_texts())


def test_ratio_mode_divides_by_each_measurements_edge(run_dirs: dict[str, Path]) -> None:
    run = load_run(run_dirs["sam"])
    ax = sharpness_figure(run, ratio=True).axes[0]
    lam, edge = np.array(records(run, "eigenvalues", 0)), np.array([m.edge for m in run.measurements])
    np.testing.assert_allclose(ydata(lines(ax, "lambda1")[0]), lam / edge, rtol=1e-15)
    band = [p for p in ax.patches if p.get_gid() == "band"][0]
    assert (band.get_y(), band.get_y() + band.get_height()) == pytest.approx(RATIO_BAND)
    assert lines(ax, "edge") == []
    data = sharpness_data(run, ratio=True)
    assert data["band"] == list(RATIO_BAND)
    np.testing.assert_allclose(data["runs"][0]["ratio"][0], lam / edge, rtol=1e-15)


def test_several_runs_get_labels_and_distinct_colours(run_dirs: dict[str, Path]) -> None:
    fig = sharpness_figure([run_dirs["gd"], run_dirs["sam"]], labels=["GD", "SAM"])
    ax = fig.axes[0]
    lam = lines(ax, "lambda1")
    assert [line.get_label() for line in lam] == ["GD: λ_max", "SAM: λ_max"]
    assert lam[0].get_color() != lam[1].get_color()
    edges = lines(ax, "edge")
    assert [line.get_color() for line in edges] == [line.get_color() for line in lam]  # edge in its run's colour
    with pytest.raises(ConfigError, match="label"):
        sharpness_figure([run_dirs["gd"], run_dirs["sam"]], labels=["only one"])


def test_diverged_run_is_marked_at_its_step(run_dirs: dict[str, Path]) -> None:
    run = load_run(run_dirs["diverged"])
    ax = sharpness_figure(run).axes[0]
    (marker,) = lines(ax, "diverged")
    assert list(marker.get_xdata()) == [run.diverged_at]
    assert list(ydata(marker)) == [records(run, "eigenvalues", 0)[-1]]  # the last λ measured before it
    assert f"step {run.diverged_at}" in marker.get_label()
    assert sharpness_data(run)["runs"][0]["diverged_at_step"] == run.diverged_at


def _edited(run: RunData, edit) -> RunData:
    return dataclasses.replace(run, measurements=[Measurement.from_json(edit(i, m.to_json()))
                                                  for i, m in enumerate(run.measurements)])


def test_missing_and_nonfinite_values_leave_gaps(run_dirs: dict[str, Path]) -> None:
    run = load_run(run_dirs["sam"])

    def edit(i: int, r: dict) -> dict:
        if i == 1:
            r["eigenvalues"], r["thresholds"] = None, {**r["thresholds"], "edge": None}
        if i == 2:
            r["train_loss"] = math.nan
            del r["grad_norm"]
        return r

    fig = sharpness_figure(_edited(run, edit))
    ax, loss_ax = fig.axes
    lam, edge = ydata(lines(ax, "lambda1")[0]), ydata(lines(ax, "edge")[0])
    assert np.isnan(lam[1]) and np.isnan(edge[1]) and np.isfinite(np.delete(lam, 1)).all()
    assert np.isnan(ydata(lines(loss_ax, "train_loss")[0])[2])
    fig.canvas.draw()  # renders with the gaps


def test_adam_edge_bounds_the_preconditioned_sharpness_only(run_dirs: dict[str, Path]) -> None:
    run = load_run(run_dirs["gd"])
    lr, beta1 = 1e-3, 0.9
    th = {"lr": lr, "gd_edge": gd_edge(lr), "rule": "adam_edge", "edge": adam_edge(lr, beta1),
          "adam_edge": adam_edge(lr, beta1), "on": "lambda_max(P^-1 H), P = diag(sqrt(v_hat) + eps)"}
    raw = _edited(run, lambda i, r: {**r, "thresholds": th})
    ax = sharpness_figure(raw).axes[0]
    assert lines(ax, "edge") == []  # 38/η does not bound λ_max(H)
    np.testing.assert_allclose(ydata(lines(ax, "gd_edge")[0]), 2 / lr)
    assert "P^-1 H" in sharpness_data(raw)["runs"][0]["note"]

    pre = _edited(raw, lambda i, r: {**r, "preconditioned_eigenvalues": [1000.0 * (i + 1)]})
    ax = sharpness_figure(pre).axes[0]
    np.testing.assert_array_equal(ydata(lines(ax, "lambda1")[0]), [1000.0, 2000.0, 3000.0])
    np.testing.assert_allclose(ydata(lines(ax, "edge")[0]), 38 / lr, rtol=1e-12)
    assert "P⁻¹H" in ax.get_ylabel()


def test_trace_accuracy_lines_and_spearman_matches_scipy(run_dirs: dict[str, Path]) -> None:
    run = load_run(run_dirs["momentum"])
    fig = trace_accuracy_figure(run)
    tr_ax, acc_ax, sc_ax = fig.axes
    tr = np.array([m.trace_estimate for m in run.measurements])
    se = np.array([m.trace_stderr for m in run.measurements])
    acc = np.array(records(run, "test_acc"))
    np.testing.assert_array_equal(ydata(lines(tr_ax, "trace")[0]), tr)
    band = tr_ax.collections[0].get_paths()[0].vertices[:, 1]
    lo, hi = (tr - 1.96 * se).min(), (tr + 1.96 * se).max()  # the 95% band of the Hutch++ estimate
    assert band.min() == pytest.approx(lo) and band.max() == pytest.approx(hi)
    np.testing.assert_array_equal(ydata(lines(acc_ax, "test_acc")[0]), acc)
    (scatter,) = lines(sc_ax, "scatter")  # step 0, the shared start, is drawn apart and left out of ρ_s
    np.testing.assert_array_equal(scatter.get_xdata(), tr[1:])
    np.testing.assert_array_equal(ydata(scatter), acc[1:])
    np.testing.assert_array_equal(lines(sc_ax, "start")[0].get_xdata(), tr[:1])
    data = trace_accuracy_data(run)["runs"][0]
    expected = stats.spearmanr(tr, acc)
    sp = data["spearman"]
    assert sp["rho"] == pytest.approx(expected.statistic, abs=1e-12) and sp["n"] == 5
    assert sp["pvalue"] == pytest.approx(expected.pvalue, abs=1e-12)
    after = stats.spearmanr(tr[1:], acc[1:]).statistic  # the criterion's reading, the one the legend quotes
    assert data["spearman_after_start"]["rho"] == pytest.approx(after, abs=1e-12)
    assert data["spearman_after_start"]["n"] == 4
    texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any(f"ρ_s = {after:+.2f} [" in t and "steps > 0" in t for t in texts), texts


def test_spearman_on_known_data_and_degenerate_cases() -> None:
    x = np.array([1.0, 2.0, 3.0, 4.0, math.nan, 6.0])
    y = np.array([10.0, 8.0, 9.0, 1.0, 5.0, math.nan])
    rho, p, n = spearman(x, y)
    assert n == 4 and rho == pytest.approx(stats.spearmanr([1, 2, 3, 4], [10, 8, 9, 1]).statistic)
    assert rho == pytest.approx(-0.8)  # 1 - 6·Σd²/(n(n²-1)), ranks (1, 2, 3, 4) vs (4, 2, 3, 1): Σd² = 18
    assert math.isnan(spearman(x[:2], y[:2])[0])
    assert math.isnan(spearman(np.ones(4), np.arange(4.0))[0])


def test_trace_figures_need_traces(run_dirs: dict[str, Path]) -> None:
    with pytest.raises(DataError, match="no Hessian trace recorded"):
        trace_accuracy_figure(run_dirs["sam"])
    with pytest.raises(DataError, match="no Hessian trace recorded"):
        escape_figure([run_dirs["sam"]])
    with pytest.raises(ConfigError, match="k must be"):
        sharpness_figure(run_dirs["gd"], k=0)


def test_escape_panels_one_line_per_run(run_dirs: dict[str, Path]) -> None:
    runs = [load_run(run_dirs["gd"]), load_run(run_dirs["momentum"])]
    fig = escape_figure(runs, labels=["RS", "SA"])
    tr_ax, test_ax, train_ax = fig.axes
    for ax, gid, key in ((test_ax, "test_acc", "test_acc"), (train_ax, "train_acc", "train_acc")):
        got = lines(ax, gid)
        assert [line.get_label() for line in got] == ["RS", "SA"]
        assert has_accuracy_errorbars(ax) == (ax is test_ax)  # test accuracy: Wilson bars on the test-set size
        for line, run in zip(got, runs):
            np.testing.assert_array_equal(ydata(line), records(run, key))
    for line, run in zip(lines(tr_ax, "trace"), runs):
        np.testing.assert_array_equal(ydata(line), [m.trace_estimate for m in run.measurements])
    data = escape_data(runs, labels=["RS", "SA"])
    assert [d["label"] for d in data["runs"]] == ["RS", "SA"]
    assert data["runs"][0]["test_examples"] == runs[0].summary.test_examples
