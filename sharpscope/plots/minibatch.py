"""Mini-batch SAM against its edge: one panel per run, log y-axis.

Each panel shows, against the step, the λ_max of the step's own mini-batch (dots) and of the probe set
(line), and the edge that applies to the run's optimizer computed from the gradient norm SAM normalised
(dashed): the SAM-edge for ρ > 0 (with heavy-ball momentum in its momentum form), and for ρ = 0 the
edge of plain or momentum SGD, which is what the SAM-edge reduces to. The tracking criterion smooths
the ratio of the two with a rolling median of 10 checkpoints; the data (:func:`minibatch_data`) hold
that rolling ratio. A run whose optimizer has no derived edge draws none.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from matplotlib.figure import Figure

from sharpscope.io.records import lookup, number_at
from sharpscope.io.series import ROLLING_WINDOW, rolling_median, sam_batch_pairs
from sharpscope.plots.runs import RunLike, as_runs
from sharpscope.plots.style import color, label_axes, legend, new_figure


def minibatch_data(runs: RunLike | Sequence[RunLike], *, labels: Sequence[str] | None = None) -> dict[str, Any]:
    """Per run: the steps measured, probe-set and batch λ_max, the gradient norms, the batch SAM-edge (None
    where no edge applies) and the rolling median of batch λ over that edge, the ratio the tracking
    criterion reads (:func:`sharpscope.experiments.criteria.minibatch_edge_stats`)."""
    out = []
    for run in as_runs(runs, labels):
        pairs = sam_batch_pairs([*run.measurements, *run.events])
        steps = [t for t, _, _ in pairs]
        lam_batch = [number_at(b, "batch_sharpness.eigenvalue") for _, _, b in pairs]
        applies = all(lookup(b, "sam_edge_batch") is not None for _, _, b in pairs)
        edge = [number_at(b, "sam_edge_batch") for _, _, b in pairs] if applies else None
        kw = (run.config.get("optimizer_kwargs") or {})
        rho, beta = float(kw.get("rho", 0.0) or 0.0), float(kw.get("momentum", 0.0) or 0.0)
        name = "SAM-edge (batch ‖g‖)" if rho > 0 else ("(2+2β)/η" if beta else "2/η")
        out.append({"label": run.label, "edge_name": name, "steps": steps,
                    "lambda_full": [number_at(m, "eigenvalues.0") for _, m, _ in pairs], "lambda_batch": lam_batch,
                    "grad_norm_full": [number_at(m, "grad_norm") for _, m, _ in pairs],
                    "grad_norm_batch": [number_at(b, "batch_grad_norm") for _, _, b in pairs],
                    "edge_batch": edge,
                    "ratio_batch_rolling": None if edge is None or not steps else
                    rolling_median([lam / e for lam, e in zip(lam_batch, edge)], ROLLING_WINDOW)})
    return {"runs": out, "window": ROLLING_WINDOW}


def minibatch_figure(runs: RunLike | Sequence[RunLike], *, labels: Sequence[str] | None = None) -> Figure:
    """One panel per run (see the module docstring)."""
    data = minibatch_data(runs, labels=labels)["runs"]
    cols = min(2, max(1, len(data)))
    fig, axes = new_figure(math.ceil(len(data) / cols), cols)
    for ax, run in zip(axes, data):
        t = run["steps"]
        ax.plot(t, run["lambda_batch"], "o", ms=2.5, alpha=0.45, color=color(0), label="λ_max, step's batch")
        ax.plot(t, run["lambda_full"], "-", lw=1.5, color=color(1), label="λ_max, probe set")
        if run["edge_batch"] is not None:
            ax.plot(t, run["edge_batch"], "--", lw=1.2, color=color(3), label=run["edge_name"])
        ax.set_yscale("log")
        label_axes(ax, "step", "eigenvalue", title=run["label"])
        legend(ax)
    for ax in axes[len(data):]:
        ax.set_visible(False)
    return fig
