"""Figures of training trajectories read from run directories.

* :func:`sharpness_figure` — λ_max (and λ_2..λ_k) against step with each run's stability
  threshold from its records' ``thresholds``: GD ``2/η`` and Polyak momentum
  ``(2+2β)/η`` are constant lines; the SAM-edge ``(‖g‖/(2ρ))(√(1 + 8ρ/(η‖g‖)) − 1)`` moves with
  ‖g‖ and is drawn through its per-measurement values, with 2/η as a dotted reference. Adam's
  edge ``(2+2β₁)/(η(1−β₁))`` (38/η at β₁ = 0.9) bounds the *preconditioned* sharpness λ_max(P⁻¹H):
  it is drawn against ``preconditioned_eigenvalues`` when the records carry them, and left out
  (only 2/η as a reference) when they hold λ_max(H) alone. ``ratio=True`` plots λ/edge with the
  band :data:`RATIO_BAND`, each run's legend naming its edge (:func:`edge_symbol`). A run that diverged
  gets an ✕ at the step its loss became non-finite.
  A run recorded with ``update_curvature`` also shows ``κ_u = uᵀHu/‖u‖²``, the curvature along each
  update (thin line beside λ_max; ``uᵀHu/uᵀPu`` beside λ_max(P⁻¹H) under Adam's edge), against the same edge.
* :func:`trace_accuracy_figure` — tr(H) ± 1.96 stderr and test accuracy against step, and tr(H)
  against test accuracy with each run's Spearman rank correlation ρ_s as the label-noise criterion reads
  it, after step 0, with its bootstrap 95% interval (Damian et al.: negative).
* :func:`escape_figure` — tr(H), test and train accuracy against step, one line per run
  (SGD vs RS vs SA, batch sizes; Ahn et al. Fig. 3).

Test accuracy carries its 95% Wilson bars for the run's test-set size
(:func:`~sharpscope.plots.intervals.accuracy_errorbars`). Log axes use
:func:`~sharpscope.plots.style.log_axis`, whose tick labels do not overlap.

Each ``*_figure`` has a ``*_data`` twin returning the plotted numbers as a dict (NumPy arrays,
NaN where a record lacks the value), for :func:`~sharpscope.plots.save.save_figure` ``data=``, and a
``draw_*`` function that draws the figure from those numbers alone (as stored in a figure's JSON).
Runs are :class:`~sharpscope.plots.runs.RunData` or run-directory paths; ``labels`` renames them.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from scipy import stats

from sharpscope.errors import DataError
from sharpscope.io.records import UpdateReading
from sharpscope.plots.arms import dodge, test_set_size
from sharpscope.plots.intervals import accuracy_errorbars
from sharpscope.plots.runs import RunData, RunLike, as_runs, event_series, has_values, series
from sharpscope.plots.style import EIGEN_STYLES, color, figure_legend, label_axes, legend, log_axis, new_figure
from sharpscope.validation import check_int

RATIO_BAND = (0.8, 1.25)
EDGE_SYMBOLS = {"gd_edge": "2/η", "momentum_edge": "(2+2β)/η", "ema_momentum_edge": "(2+2β)/(η(1−β))",
                "sam_edge": "SAM-edge", "adam_edge": "(2+2β₁)/(η(1−β₁))"}
EDGE_NAMES = {rule: f"{words} {EDGE_SYMBOLS[rule]}" if words else EDGE_SYMBOLS[rule]
              for rule, words in (("gd_edge", ""), ("momentum_edge", "momentum edge"),
                                  ("ema_momentum_edge", "EMA momentum edge"), ("sam_edge", ""),
                                  ("adam_edge", "Adam edge"))}
PRECONDITIONED = "preconditioned_eigenvalues"


def _update_curvature(run: RunData, preconditioned: bool) -> dict[str, Any] | None:
    """``{"steps", "values", "edge", "method", "key"}`` of the run's update-curvature records: ``kappa``, or
    ``kappa_preconditioned`` when the sharpness drawn is λ_max(P⁻¹H); None when it has no such records."""
    records = [r for r in run.events if isinstance(r, UpdateReading)]
    if not records:
        return None
    key = "kappa_preconditioned" if preconditioned else "kappa"
    steps, values = event_series(run, UpdateReading.KIND, key)
    methods = sorted({str(r.method) for r in records})
    return {"steps": steps, "values": values, "edge": event_series(run, UpdateReading.KIND, "thresholds.edge")[1],
            "method": "/".join(methods), "key": key}


def _rule(run: RunData) -> str | None:
    for m in run.measurements:
        if m.threshold_rule:
            return str(m.threshold_rule)
    return None


def _name_item(item: dict[str, Any], text: str, several: bool) -> str:
    return f"{item['label']}: {text}" if several else text


def _edge_is_gd(item: dict[str, Any]) -> bool:
    """Whether a run's edge is its 2/η at every measurement (gradient descent, and SAM with ρ = 0)."""
    gd = np.asarray(item["gd_edge"], dtype=float)
    edge = None if item["edge"] is None else np.asarray(item["edge"], dtype=float)
    return edge is not None and edge.shape == gd.shape and np.allclose(edge, gd, rtol=1e-12, equal_nan=True)


def edge_symbol(item: dict[str, Any]) -> str:
    """The edge a run's λ/edge divides by, as its legend names it: 2/η when the edge is 2/η, the rule's symbol
    (:data:`EDGE_SYMBOLS`), and Adam's (2+2β₁)/(η(1−β₁)) as its multiple ``c`` of 1/η, ``c = 2·edge/(2/η)``
    (38/η at β₁ = 0.9); ``edge`` when no edge is known."""
    if _edge_is_gd(item):
        return "2/η"
    if item["rule"] == "adam_edge" and item["edge"] is not None:
        multiple = 2 * np.asarray(item["edge"], dtype=float) / np.asarray(item["gd_edge"], dtype=float)
        if np.isfinite(multiple).any():
            return f"{float(np.nanmedian(multiple)):.3g}/η"
    return EDGE_SYMBOLS.get(item["rule"] or "", "edge") if item["edge"] is not None else "edge"


def _over(text: str, symbol: str) -> str:
    """``text`` divided by the edge ``symbol``: ``λ_max/(2/η)``, ``λ_max/SAM-edge``."""
    return f"{text}/({symbol})" if "/" in symbol else f"{text}/{symbol}"


# ------------------------------------------------------------------------------ sharpness
def sharpness_data(runs: RunLike | Sequence[RunLike], *, labels: Sequence[str] | None = None, k: int = 1,
                   ratio: bool = False) -> dict[str, Any]:
    """What :func:`sharpness_figure` plots, per run: ``steps``, ``eigenvalues`` (one array per
    λ_i, i ≤ k, as far as recorded), ``quantity`` (``"lambda_max(H)"`` or the preconditioned one),
    ``edge`` (the threshold that bounds it, per measurement; None when none applies), ``rule``,
    ``gd_edge`` (2/η), ``train_loss``, ``diverged_at_step``, ``update_curvature`` (None, or the κ_u readings
    with their own steps and edge: see :func:`_update_curvature`) and, with ``ratio``, ``ratio`` = λ/edge
    (and κ_u/edge in ``update_curvature["ratio"]``)."""
    check_int("k", k, low=1)
    out: list[dict[str, Any]] = []
    for run in as_runs(runs, labels):
        rule = _rule(run)
        key, quantity, note = "eigenvalues", "lambda_max(H)", None
        if rule == "adam_edge":
            if has_values([run], f"{PRECONDITIONED}.0"):
                key, quantity = PRECONDITIONED, "lambda_max(P^-1 H)"
            else:
                note = ("Adam's edge bounds lambda_max(P^-1 H), which these records do not hold; "
                        "lambda_max(H) is shown with 2/eta as a reference only")
        recorded = max(len((m.preconditioned_eigenvalues if key == PRECONDITIONED else m.eigenvalues) or ())
                       for m in run.measurements)
        steps, loss = series(run, "train_loss")
        eigs = [series(run, f"{key}.{i}")[1] for i in range(min(k, max(recorded, 1)))]
        edge = None if note else series(run, "thresholds.edge")[1]
        if edge is not None and not np.isfinite(edge).any():  # the optimizer has no derived edge: draw none
            edge = None
        item: dict[str, Any] = {
            "label": run.label, "path": str(run.path), "rule": rule, "quantity": quantity, "steps": steps,
            "eigenvalues": eigs, "edge": edge, "gd_edge": series(run, "thresholds.gd_edge")[1],
            "train_loss": loss, "diverged_at_step": run.diverged_at,
            "update_curvature": _update_curvature(run, key == PRECONDITIONED)}
        if note:
            item["note"] = note
        item["cannot_draw"] = _missing_sharpness(run, edge is None and not note, k, recorded, loss)
        if ratio:
            item["ratio"] = [e / edge if edge is not None else np.full_like(e, np.nan) for e in eigs]
            if item["update_curvature"] is not None:
                upd = item["update_curvature"]
                upd["ratio"] = upd["values"] / upd["edge"] if edge is not None else np.full_like(upd["values"], np.nan)
        out.append(item)
    data: dict[str, Any] = {"figure": "sharpness", "k": k, "ratio": ratio, "runs": out}
    if ratio:
        data["band"] = list(RATIO_BAND)
    return data


def _missing_sharpness(run: RunData, no_edge: bool, k: int, recorded: int, loss: np.ndarray) -> list[str]:
    """One sentence for each part of the sharpness figure that ``run``'s records cannot give."""
    out = []
    if no_edge:
        thresholds = [m.thresholds for m in run.measurements]
        if not any(thresholds):
            out.append("no edge line: no thresholds recorded (give the tracker the optimizer: "
                       "tracker.maybe_measure(step, model, optimizer))")
        else:
            rule = _rule(run)
            out.append(f"no edge line: no edge is derived for this optimizer{f' (rule {rule})' if rule else ''}")
    if k > max(recorded, 1):
        out.append(f"λ_{recorded + 1}..λ_{k} not drawn: only {recorded} eigenvalue(s) recorded per measurement")
    if not np.isfinite(loss).any():
        out.append("no training-loss panel values: no train_loss recorded")
    return out


def _divergence_marker(ax: Axes, steps: np.ndarray, values: np.ndarray, at: int, c: str, label: str) -> None:
    """An ✕ at the divergence step, at the last finite value measured before it (a vertical line
    when there is none)."""
    before = np.isfinite(values) & (steps <= at)
    if before.any():
        y = values[before][-1]
        (line,) = ax.plot([at], [y], marker="X", markersize=8, linestyle="none", color=c, label=label)
    else:
        line = ax.axvline(at, color=c, linestyle=(0, (1, 2)), linewidth=1.0, label=label)
    line.set_gid("diverged")


def sharpness_figure(runs: RunLike | Sequence[RunLike], *, labels: Sequence[str] | None = None, k: int = 1,
                     ratio: bool = False, loss: bool = True, log: bool = False) -> Figure:
    """λ_1..λ_k against step with each run's threshold (see the module docstring); with ``loss``, a
    second panel of the training loss; ``log``: a logarithmic sharpness axis (for runs whose λ_max differ by
    orders of magnitude). Lines carry gids ``lambda1``, ``lambda2``, ..., ``edge``, ``gd_edge``, ``diverged``,
    ``train_loss`` (and ``band`` for the ratio band)."""
    return draw_sharpness(sharpness_data(runs, labels=labels, k=k, ratio=ratio), loss=loss, log=log)


def draw_sharpness(data: dict[str, Any], *, loss: bool = True, log: bool = False) -> Figure:
    """:func:`sharpness_figure` from the numbers of :func:`sharpness_data`."""
    ratio = bool(data.get("ratio"))
    items = data["runs"]
    several = len(items) > 1
    fig, axes = new_figure(2 if loss else 1, sharex=True)
    ax = axes[0]
    if ratio:
        lo, hi = RATIO_BAND
        ax.axhspan(lo, hi, color="0.85", alpha=0.6, linewidth=0, label=f"band [{lo}, {hi}]").set_gid("band")
        ax.axhline(1.0, color="0.3", linewidth=0.8).set_gid("unit")
    drawn_gd: list[np.ndarray] = []  # 2/η reference lines drawn so far (one per distinct η)
    for i, item in enumerate(items):
        c = color(i)
        steps = np.asarray(item["steps"], dtype=float)
        sym = "λ(P⁻¹H)" if item["quantity"] != "lambda_max(H)" else "λ"
        ys = item["ratio"] if ratio else item["eigenvalues"]
        edge_name = edge_symbol(item)
        for j, y in enumerate(ys):
            text = f"{sym}_max" if j == 0 else f"{sym}_{j + 1}"
            (line,) = ax.plot(steps, y, color=c, linestyle=EIGEN_STYLES[j % len(EIGEN_STYLES)],
                              linewidth=1.4 if j == 0 else 0.9, marker="." if len(steps) < 30 else None,
                              markersize=3, label=_name_item(item, _over(text, edge_name) if ratio else text, several))
            line.set_gid(f"lambda{j + 1}")
        upd = item.get("update_curvature")
        if upd is not None:
            kappa, form = (("κ_u^P", "uᵀHu/uᵀPu") if upd["key"] == "kappa_preconditioned" else ("κ_u", "uᵀHu/‖u‖²"))
            text = _over(kappa, edge_name) if ratio else f"{kappa} = {form}"  # a ratio's legend: no room for the form
            (line,) = ax.plot(upd["steps"], upd["ratio"] if ratio else upd["values"], color=c, linewidth=0.7,
                              alpha=0.55, label=_name_item(item, f"{text} ({upd['method']})", several))
            line.set_gid("kappa_u")
        if not ratio:
            gd = np.asarray(item["gd_edge"], dtype=float)
            edge = None if item["edge"] is None else np.asarray(item["edge"], dtype=float)
            is_gd = _edge_is_gd(item)
            if edge is not None:  # SAM with ρ = 0 is gradient descent: its edge is 2/η, named so
                name = "2/η" if is_gd else EDGE_NAMES.get(item["rule"] or "", "edge")
                (line,) = ax.plot(steps, edge, color=c, linestyle=(0, (5, 2)), linewidth=1.0, alpha=0.8,
                                  label=_name_item(item, name, several))
                line.set_gid("edge")
            if not any(d.shape == gd.shape and np.allclose(d, gd, equal_nan=True) for d in drawn_gd):
                drawn_gd.append(gd)  # one 2/η line per step size (a ρ = 0 run's edge is that line)
                if not is_gd and item["rule"] != "gd_edge" and np.isfinite(gd).any():
                    (line,) = ax.plot(steps, item["gd_edge"], color=c, linestyle=(0, (1, 2)), linewidth=0.9,
                                      alpha=0.7, label=_name_item(item, "2/η", several))
                    line.set_gid("gd_edge")
        if item["diverged_at_step"] is not None:
            _divergence_marker(ax, steps, ys[0], item["diverged_at_step"], c,
                               _name_item(item, f"diverged (step {item['diverged_at_step']})", several))
    quantity = "λ_max(P⁻¹H)" if all(it["quantity"] != "lambda_max(H)" for it in items) else "λ_max"
    label_axes(ax, "" if loss else "step", f"{quantity} / edge" if ratio else f"sharpness {quantity}")
    if log:
        log_axis(ax, "y")
    if len(ax.get_legend_handles_labels()[0]) > 4:
        figure_legend(fig, ax, columns=2)
    else:
        legend(ax)
    if loss:
        ax = axes[1]
        for i, item in enumerate(items):
            (line,) = ax.plot(item["steps"], item["train_loss"], color=color(i), linewidth=1.2,
                              label=item["label"] if several else None)
            line.set_gid("train_loss")
        losses = [np.asarray(it["train_loss"], dtype=float) for it in items]
        finite = np.concatenate([x[np.isfinite(x)] for x in losses])
        if finite.size and (finite > 0).all():
            log_axis(ax, "y")
        label_axes(ax, "step", "train loss")
    return fig


# -------------------------------------------------------------------------- trace, accuracy
def _require(runs: list[RunData], key: str, what: str, hint: str) -> None:
    if not has_values(runs, key):
        names = ", ".join(str(r.path) for r in runs)
        raise DataError(f"{names}: no {what} recorded ({key!r} is missing from every measurement; {hint})")


def spearman(x: np.ndarray, y: np.ndarray) -> tuple[float, float, int]:
    """``(ρ_s, p-value, n)`` of :func:`scipy.stats.spearmanr` over the pairs where both are finite;
    NaN with fewer than 3 pairs or a constant side."""
    mask = np.isfinite(x) & np.isfinite(y)
    n = int(mask.sum())
    if n < 3 or np.ptp(x[mask]) == 0 or np.ptp(y[mask]) == 0:
        return math.nan, math.nan, n
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.spearmanr(x[mask], y[mask])
    return float(res.statistic), float(res.pvalue), n


def _curves(run: RunData) -> dict[str, Any]:
    steps, trace = series(run, "trace.estimate")
    return {"label": run.label, "path": str(run.path), "steps": steps, "trace": trace,
            "trace_stderr": series(run, "trace.stderr")[1], "test_acc": series(run, "test_acc")[1],
            "train_acc": series(run, "train_acc")[1], "diverged_at_step": run.diverged_at,
            "test_examples": test_set_size(run)}


def criterion_spearman(item: dict[str, Any]) -> dict[str, Any]:
    """ρ_s of tr(H) against test accuracy as the label-noise criterion reads it: the measurements after the
    first (step 0 is the shared starting point, the same in every run), with the percentile-bootstrap 95%
    interval of :func:`~sharpscope.io.series.spearman_with_ci` (``{"rho", "ci", "n", ...}``)."""
    from sharpscope.io.series import spearman_with_ci

    trace, acc = (np.asarray(item[k], dtype=float)[1:] for k in ("trace", "test_acc"))
    return spearman_with_ci(trace.tolist(), acc.tolist())


def trace_accuracy_data(runs: RunLike | Sequence[RunLike], *,
                        labels: Sequence[str] | None = None) -> dict[str, Any]:
    """What :func:`trace_accuracy_figure` plots, per run: ``steps``, ``trace``, ``trace_stderr``,
    ``test_acc``, ``train_acc``, ``test_examples``, ``spearman`` = ``{"rho", "pvalue", "n"}`` of tr(H) vs test
    accuracy over all measurements and ``spearman_after_start`` (:func:`criterion_spearman`, the one drawn)."""
    loaded = as_runs(runs, labels)
    _require(loaded, "trace.estimate", "Hessian trace", "train with trace=True")
    _require(loaded, "test_acc", "test accuracy", "train with test_data set")
    items = []
    for run in loaded:
        item = _curves(run)
        rho, p, n = spearman(item["trace"], item["test_acc"])
        item["spearman"] = {"rho": rho, "pvalue": p, "n": n}
        item["spearman_after_start"] = criterion_spearman(item)
        missing = [name for name, key in (("Hessian trace", "trace"), ("test accuracy", "test_acc"))
                   if not np.isfinite(item[key]).any()]
        item["cannot_draw"] = [f"no lines: no {' or '.join(missing)} recorded"] if missing else []
        items.append(item)
    return {"figure": "trace_accuracy", "runs": items}


def _trace_panel(ax: Axes, items: list[dict[str, Any]], several: bool) -> None:
    for i, item in enumerate(items):
        c = color(i)
        steps, tr, se = (np.asarray(item[k], dtype=float) for k in ("steps", "trace", "trace_stderr"))
        (line,) = ax.plot(steps, tr, color=c, linewidth=1.3, marker="." if len(steps) < 30 else None,
                          markersize=3, label=item["label"] if several else "tr(H)")
        line.set_gid("trace")
        if np.isfinite(se).any():
            ax.fill_between(steps, tr - 1.96 * se, tr + 1.96 * se, color=c, alpha=0.2, linewidth=0,
                            label=None if several else "± 1.96 stderr (Hutch++)")
    label_axes(ax, "step", "trace tr(H)")


def _accuracy_panel(ax: Axes, items: list[dict[str, Any]], key: str, ylabel: str, several: bool) -> None:
    """``key`` against step per run; test accuracy with its 95% Wilson bars on the run's test-set size."""
    for i, item in enumerate(items):
        n = item.get("test_examples") if key == "test_acc" else None
        steps = np.asarray(item["steps"], dtype=float)
        accuracy_errorbars(ax, steps, item[key], n, gid=key, shift=dodge(steps, i, len(items)), color=color(i), linewidth=1.3,
                           marker="." if len(steps) < 30 else None, markersize=3,
                           label=item["label"] if several else None)
    label_axes(ax, "step", ylabel)


def trace_accuracy_figure(runs: RunLike | Sequence[RunLike], *, labels: Sequence[str] | None = None) -> Figure:
    """Three panels: tr(H) ± 1.96 stderr against step, test accuracy (95% Wilson bars) against step, and
    tr(H) against test accuracy (markers with the same bars, gid ``scatter``; the step-0 point hollow) with
    the criterion's ρ_s and its 95% interval per run in the legend (:func:`criterion_spearman`)."""
    return draw_trace_accuracy(trace_accuracy_data(runs, labels=labels))


def draw_trace_accuracy(data: dict[str, Any]) -> Figure:
    """:func:`trace_accuracy_figure` from the numbers of :func:`trace_accuracy_data`."""
    items = data["runs"]
    several = len(items) > 1
    fig, axes = new_figure(1, 3)
    _trace_panel(axes[0], items, several)
    legend(axes[0])
    _accuracy_panel(axes[1], items, "test_acc", "test accuracy", several)
    ax = axes[2]
    for i, item in enumerate(items):
        sp = item.get("spearman_after_start") or criterion_spearman(item)
        lo, hi = sp["ci"]
        rho = "n/a" if not math.isfinite(sp["rho"]) else f"{sp['rho']:+.2f} [{lo:+.2f}, {hi:+.2f}]"
        trace, acc = np.asarray(item["trace"], dtype=float), np.asarray(item["test_acc"], dtype=float)
        accuracy_errorbars(ax, trace[1:], acc[1:], item.get("test_examples"), gid="scatter", color=color(i),
                           marker="o", markersize=3.5, linestyle="none", alpha=0.85,
                           label=_name_item(item, f"ρ_s = {rho} (n = {sp['n']}, steps > 0)", several))
        ax.plot(trace[:1], acc[:1], marker="o", markersize=4, linestyle="none", markerfacecolor="none",
                color=color(i), gid="start", label="step 0 (shared start, not in ρ_s)" if i == 0 else None)
    label_axes(ax, "trace tr(H)", "test accuracy")
    figure_legend(fig, ax, columns=2)
    return fig


# ---------------------------------------------------------------------------------- escape
def escape_data(runs: RunLike | Sequence[RunLike], *, labels: Sequence[str] | None = None) -> dict[str, Any]:
    """What :func:`escape_figure` plots, per run: ``steps``, ``trace``, ``trace_stderr``,
    ``test_acc``, ``train_acc``, ``diverged_at_step``."""
    loaded = as_runs(runs, labels)
    _require(loaded, "trace.estimate", "Hessian trace", "train with trace=True")
    items = [_curves(run) for run in loaded]
    for item in items:
        item["cannot_draw"] = [f"no {name} line: no {key} recorded" for key, name in
                               (("test_acc", "test-accuracy"), ("train_acc", "train-accuracy"))
                               if not np.isfinite(item[key]).any()]
    return {"figure": "escape", "runs": items}


def escape_figure(runs: RunLike | Sequence[RunLike], *, labels: Sequence[str] | None = None) -> Figure:
    """Three panels against step, one line per run: tr(H) ± 1.96 stderr, test accuracy (95% Wilson bars on
    the test-set size), train accuracy (gids ``trace``, ``test_acc``, ``train_acc``)."""
    return draw_escape(escape_data(runs, labels=labels))


def draw_escape(data: dict[str, Any]) -> Figure:
    """:func:`escape_figure` from the numbers of :func:`escape_data`."""
    items = data["runs"]
    fig, axes = new_figure(1, 3)
    _trace_panel(axes[0], items, several=True)
    _accuracy_panel(axes[1], items, "test_acc", "test accuracy", several=True)
    _accuracy_panel(axes[2], items, "train_acc", "train accuracy", several=True)
    legend(axes[0])
    return fig
