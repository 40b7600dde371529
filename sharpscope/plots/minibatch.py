"""Mini-batch SAM against its edge: one row per run, the sharpness beside the ratio its verdict reads.

Left panel (log y-axis), against the step: the λ_max of the step's own mini-batch (dots) with the edge from
the gradient norm SAM normalised on that batch (dashed), and the λ_max of the probe set (line) with the edge
from the probe set's gradient norm (dotted). The edge is the one that applies to the run's optimizer and no
other: the SAM-edge for ρ > 0 (:func:`sharpscope.thresholds.sam_edge`, with heavy-ball momentum in its
momentum form), and for ρ = 0 the edge of plain or momentum SGD (2/η or (2+2β)/η, what the SAM-edge
reduces to; it does not depend on the gradient, so both readings share one line).

Right panel: each pairing of sharpness and edge (``batch/batch`` = batch λ over the batch-‖g‖ edge, Long &
Bartlett's mini-batch reading; ``full/full`` = probe-set λ over the probe-‖g‖ edge; and the two crossed ones)
as the rolling median of ``λ/edge`` over :data:`~sharpscope.io.series.ROLLING_WINDOW` checkpoints, the
quantity the tracking criterion (:func:`sharpscope.experiments.criteria.minibatch_edge_stats`) reads, with
its band [0.8, 1.25] and 1 marked. A run whose optimizer has no derived edge draws none.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from sharpscope.io.jsonsafe import as_number
from sharpscope.io.series import ROLLING_WINDOW, rolling_median, sam_batch_pairs
from sharpscope.plots.runs import RunLike, as_runs
from sharpscope.plots.style import color, figure_legend, label_axes, legend, log_axis, new_figure

BAND = (0.8, 1.25)
PAIRINGS = ("batch/batch", "full/full", "batch/full", "full/batch")  # λ reading / edge reading
MATCHED = PAIRINGS[:2]


def minibatch_data(runs: RunLike | Sequence[RunLike], *, labels: Sequence[str] | None = None) -> dict[str, Any]:
    """Per run: the steps measured, probe-set and batch λ_max, the gradient norms, the edge from the batch
    gradient norm (``edge_batch``) and from the probe set's (``edge_full``, the measurement's threshold; both
    None where no edge applies), and the rolling medians of every pairing (:func:`pairing_ratios`)."""
    out = []
    for run in as_runs(runs, labels):
        pairs = sam_batch_pairs([*run.measurements, *run.events])  # (step, Measurement, SamBatch)
        steps = [t for t, _, _ in pairs]
        lam_batch = [as_number(b.batch_lambda_max) for _, _, b in pairs]
        applies = all(b.sam_edge_batch is not None for _, _, b in pairs)
        kw = (run.config.get("optimizer_kwargs") or {})
        rho, beta = float(kw.get("rho", 0.0) or 0.0), float(kw.get("momentum", 0.0) or 0.0)
        name = "SAM-edge" if rho > 0 else ("(2+2β)/η" if beta else "2/η")
        item = {"label": run.label, "edge_name": name, "rho": rho, "momentum": beta, "steps": steps,
                "lambda_full": [as_number(m.lambda_max) for _, m, _ in pairs], "lambda_batch": lam_batch,
                "grad_norm_full": [as_number(m.grad_norm) for _, m, _ in pairs],
                "grad_norm_batch": [as_number(b.batch_grad_norm) for _, _, b in pairs],
                "edge_batch": [as_number(b.sam_edge_batch) for _, _, b in pairs] if applies else None,
                "edge_full": [as_number(m.edge) for _, m, _ in pairs] if applies else None}
        out.append({**item, "ratios": pairing_ratios(item)})
    return {"figure": "minibatch", "runs": out, "window": ROLLING_WINDOW, "band": list(BAND)}


def pairing_ratios(item: Mapping[str, Any], window: int = ROLLING_WINDOW) -> dict[str, list[float]] | None:
    """``{"λ/edge": rolling median of λ over edge}`` for the four pairings of :data:`PAIRINGS` (None without
    an edge)."""
    if item.get("edge_batch") is None or item.get("edge_full") is None or not item["steps"]:
        return None
    lam = {"batch": item["lambda_batch"], "full": item["lambda_full"]}
    edge = {"batch": item["edge_batch"], "full": item["edge_full"]}
    out = {}
    for pairing in PAIRINGS:
        a, b = pairing.split("/")
        out[pairing] = rolling_median([float(x) / float(e) for x, e in zip(lam[a], edge[b])], window)
    return out


def draw_minibatch(data: Mapping[str, Any]) -> Figure:
    """One row per run (see the module docstring), from the numbers of :func:`minibatch_data`. The matched pairings (``batch/batch``,
    which the E7 verdict needs to hold, and ``full/full``, which the ρ = 0 control may also use) are drawn
    thick, the crossed ones thin."""
    runs = data["runs"]
    fig, axes = new_figure(len(runs), 2)
    band = tuple(data.get("band") or BAND)
    for row, run in enumerate(runs):
        ax, rax = axes[2 * row], axes[2 * row + 1]
        t = np.asarray(run["steps"], dtype=float)
        ax.plot(t, run["lambda_batch"], "o", ms=2.5, alpha=0.5, color=color(0), label="λ_max, step's batch",
                gid="lambda_batch")
        ax.plot(t, run["lambda_full"], "-", lw=1.5, color=color(1), label="λ_max, probe set", gid="lambda_full")
        edge_b, edge_f = run.get("edge_batch"), run.get("edge_full")
        same = edge_b is not None and edge_f is not None and np.allclose(edge_b, edge_f, equal_nan=True)
        if edge_b is not None:
            ax.plot(t, edge_b, "--", lw=1.2, color=color(0), gid="edge_batch",
                    label=run["edge_name"] if same else f"{run['edge_name']} (batch ‖g‖)")
        if edge_f is not None and not same:
            ax.plot(t, edge_f, ":", lw=1.4, color=color(1), gid="edge_full",
                    label=f"{run['edge_name']} (probe ‖g‖)")
        log_axis(ax, "y")
        label_axes(ax, "step", "eigenvalue", title=run["label"])
        legend(ax)
        ratios = run.get("ratios") or pairing_ratios(run, int(data.get("window") or ROLLING_WINDOW))
        rax.axhspan(*band, color="0.88", linewidth=0, gid="band")
        rax.axhline(1.0, color="0.3", linewidth=0.8)
        if ratios:
            for pairing, values in ratios.items():
                lam, edge = pairing.split("/")
                thick = pairing in MATCHED  # colour: the edge's reading; line style: the sharpness's
                rax.plot(t[: len(values)], values, color=color(0 if edge == "batch" else 1), lw=1.6 if thick else 0.8,
                         alpha=1.0 if thick else 0.7, linestyle="-" if lam == "batch" else "--",
                         label=f"λ {'batch' if lam == 'batch' else 'probe set'} / edge from "
                               f"{'batch' if edge == 'batch' else 'probe-set'} ‖g‖"
                               + ("" if thick else " (crossed)"), gid=f"ratio:{pairing}")
        label_axes(rax, "step", f"rolling median ({data.get('window') or ROLLING_WINDOW}) of λ/edge",
                   title=f"{run['label']}: λ over its edge, band [{band[0]:g}, {band[1]:g}]")
    if runs:
        figure_legend(fig, axes[1], columns=4)
    return fig


def minibatch_facts(data: Mapping[str, Any]) -> str:
    """What the right-hand panels show, one clause per run: the median over checkpoints of the rolling ratio
    of each matched pairing, and its range over the second half of the run."""
    parts = []
    for run in data["runs"]:
        ratios = run.get("ratios") or pairing_ratios(run, int(data.get("window") or ROLLING_WINDOW))
        if not ratios:
            continue
        texts = []
        for pairing in MATCHED:
            values = np.asarray(ratios[pairing], dtype=float)
            late = values[len(values) // 2:]
            texts.append(f"{pairing} median {np.nanmedian(values):.2f} (second half {np.nanmin(late):.2f}–"
                         f"{np.nanmax(late):.2f})")
        parts.append(f"{run['label']}: {', '.join(texts)}")
    return ("Rolling λ/edge (batch/batch: batch λ over the batch-‖g‖ edge; full/full: probe-set λ over the "
            "probe-‖g‖ edge): " + "; ".join(parts) + ".") if parts else ""
