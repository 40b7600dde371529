"""The pass criteria of the edge-of-stability, SAM-edge and trace studies, computed from a run directory's records.

Every function takes the typed measurement records of a run (:class:`~sharpscope.io.records.Measurement`,
as :func:`~sharpscope.io.rundir.read_measurements` gives them) and returns a JSON-ready dict of the numbers the criterion is stated in, with ``holds`` (bool)
where the criterion is a test.

* :func:`edge_stats` (E1, E2, E3): ratio ``r_t = λ_t/edge_t``; first crossing ``c`` = first
  ``r ≥ 1``; after it: median, range, the share in ``band``, the longest run of ``r > 1.3``;
  progressive sharpening = ``λ_c / min_{t ≤ c} λ_t``; loss non-monotone after ``c`` and lower at the
  end than at ``c``. The stated criterion (E1, and E2 with the momentum edge): ``holds`` when the
  run sharpens (≥ 1.5×, starting below 0.6·edge), the median after the crossing is in
  ``[0.95, 1.15]``, no two consecutive ratios exceed 1.3 (no sustained excursion), and the loss is
  non-monotone after the crossing and lower at the end. The toolkit's own stricter check,
  reported separately as ``strict_holds``, also asks ≥ 90% of the checkpoints in ``[0.9, 1.25]``.
* :func:`sam_edge_stats` (E5): from the first ``r ≥ 0.9`` on, ``r ∈ [0.8, 1.25]`` for ≥ 80% of the
  checkpoints, and ``max λ < 0.8·(2/η)`` over the run (``below_2_eta_verdict``: not testable when λ is
  already below ``0.8·(2/η)`` at initialisation, before any SAM step).
* :func:`minibatch_edge_stats` (E7): mini-batch SAM's sharpness (probe set or the step's batch) over
  the SAM-edge (from either gradient norm), as a rolling median of 10 checkpoints; "tracks" when,
  from the first smoothed ratio ≥ 0.9 on, ≥ 80% of at least 5 checkpoints lie in ``[0.8, 1.25]``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from itertools import pairwise
from operator import attrgetter
from pathlib import Path
from typing import Any

from sharpscope.experiments import verdicts
from sharpscope.io.jsonsafe import as_number
from sharpscope.io.records import Measurement, SamBatch, typed_record
from sharpscope.io.rundir import RunDirectory
from sharpscope.io.series import ROLLING_WINDOW, rolling_median, sam_batch_pairs


def column(records: Sequence[Measurement], get: Callable[[Measurement], Any]) -> list[float]:
    """``get(m)`` of every record ``m`` as a float, NaN where missing or not a number
    (:func:`sharpscope.io.jsonsafe.as_number`)."""
    return [as_number(get(m)) for m in records]


def _rows(records: Sequence[Measurement], *names: str) -> list[tuple[float, ...]]:
    """Per record, the :func:`column` of each of its attributes ``names``; the records with one of them not
    finite left out."""
    rows = zip(*(column(records, attrgetter(name)) for name in names))
    return [row for row in rows if all(math.isfinite(v) for v in row)]


def edge_stats(records: Sequence[Measurement], band: tuple[float, float] = (0.9, 1.25)) -> dict[str, Any]:
    """E1-style statistics of ``λ_max/edge`` (see the module docstring); ``crossed`` False if never ``≥ 1``."""
    rows = _rows(records, "step", "lambda_max", "edge", "train_loss")
    if not rows:
        return {"crossed": False, "holds": False, "checkpoints": 0}
    steps, lam, edge, loss = (list(c) for c in zip(*rows))
    ratios = [a / b for a, b in zip(lam, edge)]
    out: dict[str, Any] = {"checkpoints": len(ratios), "initial_ratio": ratios[0], "max_ratio": max(ratios),
                           "edge_initial": edge[0]}
    crossing = crossing_stats(steps, lam, edge, loss, band)
    out["crossed"] = crossing is not None
    if crossing is None:
        return {**out, "holds": False}
    out.update(crossing)
    out["sharpens"] = bool(out["cross_step"] > 0 and out["initial_ratio"] < 0.6 and out["rise"] >= 1.5)
    out["holds"] = bool(out["sharpens"] and 0.95 <= out["median"] <= 1.15 and out["longest_above_1_3"] < 2
                        and out["loss_nonmonotone"] and out["loss_end_below_cross"])
    out["strict_holds"] = bool(out["holds"] and out["in_band"] >= 0.9)
    return out


def crossing_stats(steps: Sequence[int], sharpness: Sequence[float], edges: Sequence[float], loss: Sequence[float],
                   band: tuple[float, float] = (0.9, 1.25)) -> dict[str, Any] | None:
    """Statistics of ``r_t = λ_t/edge_t`` around the first checkpoint ``c`` with ``r ≥ 1`` (None if
    there is none): ``rise`` = λ_c over the minimum of λ before it, ``rising_frac`` = share of rising
    steps from that minimum to ``c``, ``median``/``min``/``max``/``in_band`` of ``r`` from ``c`` on,
    ``longest_above_1_3`` = the longest run of ``r > 1.3``, and whether the loss is non-monotone
    after ``c`` and lower at the end than at ``c``."""
    ratios = [a / b for a, b in zip(sharpness, edges)]
    c = next((i for i, r in enumerate(ratios) if r >= 1.0), None)
    if c is None:
        return None
    post, pre = ratios[c:], list(sharpness[: c + 1])
    lo = min(range(len(pre)), key=pre.__getitem__)
    rising = [b > a for a, b in pairwise(pre[lo:])]
    run = longest = 0
    for r in post:
        run = run + 1 if r > 1.3 else 0
        longest = max(longest, run)
    return {"cross_step": int(steps[c]), "cross_index": c, "after_crossing": len(post), "rise": sharpness[c] / pre[lo],
            "rising_frac": sum(rising) / max(1, len(rising)), "median": statistics.median(post), "min": min(post),
            "max": max(post), "in_band": sum(band[0] <= r <= band[1] for r in post) / len(post), "band": list(band),
            "longest_above_1_3": longest, "median_lambda": statistics.median(sharpness[c:]),
            "loss_nonmonotone": any(b > a for a, b in pairwise(loss[c:])), "loss_end_below_cross": loss[-1] < loss[c]}


def steps_after_ratio(records: Sequence[Measurement], ratio: float) -> int | None:
    """Steps run after the first measurement with ``λ_max ≥ ratio·edge`` (None if never)."""
    rows = _rows(records, "step", "lambda_max", "edge")
    first = next((s for s, lam, e in rows if lam >= ratio * e), None)
    return None if first is None else int(rows[-1][0] - first)


def sam_edge_stats(records: Sequence[Measurement]) -> dict[str, Any]:
    """E5: ``λ/SAM_edge`` from the first ``≥ 0.9`` on, and ``max λ`` against ``2/η``."""
    rows = _rows(records, "step", "lambda_max", "edge", "gd_edge")
    if not rows:
        return {"holds": False, "checkpoints": 0}
    steps, lam, edge, gd = (list(c) for c in zip(*rows))
    ratios = [a / b for a, b in zip(lam, edge)]
    start = next((i for i, r in enumerate(ratios) if r >= 0.9), None)
    out: dict[str, Any] = {"checkpoints": len(ratios), "max_lambda_over_2_eta": max(lam) / gd[0],
                           "initial_lambda_over_2_eta": lam[0] / gd[0],
                           "lambda_range": [min(lam), max(lam)], "edge_range": [min(edge), max(edge)]}
    below = verdicts.judge_threshold(out["max_lambda_over_2_eta"] < 0.8, met_at_start=lam[0] / gd[0] < 0.8,
                                     reason=f"max λ = {out['max_lambda_over_2_eta']:.3g}·(2/η), "
                                            f"{lam[0] / gd[0]:.3g}·(2/η) at initialisation")
    out["below_2_eta_verdict"] = below.to_json()
    if start is None:
        return {**out, "tracking_from": None, "holds": False}
    post = ratios[start:]
    out.update(tracking_from=int(steps[start]), after=len(post), median=statistics.median(post), min=min(post),
               max=max(post), in_band=sum(0.8 <= r <= 1.25 for r in post) / len(post),
               median_lambda=statistics.median(lam[start:]))
    out["holds"] = bool(out["in_band"] >= 0.8 and out["max_lambda_over_2_eta"] < 0.8)
    return out


def _tracking(steps: Sequence[int], sharpness: Sequence[float], edges: Sequence[float], window: int) -> dict[str, Any]:
    """``r_t = λ_t/edge_t`` smoothed by a rolling median of ``window`` checkpoints: from the first smoothed
    ``r ≥ 0.9`` on, its median, range and the share in ``[0.8, 1.25]``."""
    ratios = rolling_median([a / b for a, b in zip(sharpness, edges)], window)
    start = next((i for i, r in enumerate(ratios) if r >= 0.9), None)
    out: dict[str, Any] = {"checkpoints": len(ratios), "median_all": statistics.median(ratios) if ratios else math.nan}
    if start is None:
        return {**out, "tracking_from": None, "in_band": 0.0, "tracks": False}
    post = ratios[start:]
    in_band = sum(0.8 <= r <= 1.25 for r in post) / len(post)
    return {**out, "tracking_from": int(steps[start]), "after": len(post), "median": statistics.median(post),
            "min": min(post), "max": max(post), "in_band": in_band, "tracks": bool(in_band >= 0.8 and len(post) >= 5)}


def minibatch_edge_stats(run_dir: str | Path, window: int = ROLLING_WINDOW) -> dict[str, Any]:
    """Mini-batch SAM against its edge, every pairing of sharpness and gradient norm: λ_max of the probe
    set (``full``) or of the step's mini-batch (``batch``) against the SAM-edge from the probe set's
    gradient norm or from the norm SAM normalised, each ratio smoothed by a rolling median of ``window``
    checkpoints (:func:`_tracking`). ``batch/batch`` is Long & Bartlett's mini-batch reading."""
    records = (typed_record(r) for r in RunDirectory(run_dir).read_metrics())
    rows = []
    for step, m, b in sam_batch_pairs(r for r in records if isinstance(r, (Measurement, SamBatch))):
        values = tuple(as_number(v) for v in (m.lambda_max, b.batch_lambda_max, m.edge, b.sam_edge_batch,
                                              m.grad_norm, b.batch_grad_norm))
        if all(math.isfinite(v) for v in values):
            rows.append((step, *values))
    if not rows:
        return {"checkpoints": 0}
    t, lam_full, lam_batch, edge_full, edge_batch, g_full, g_batch = (list(c) for c in zip(*rows))
    out: dict[str, Any] = {"checkpoints": len(rows), "window": window,
                           "lambda_full_range": [min(lam_full), max(lam_full)],
                           "lambda_batch_over_full_median": statistics.median(b / f for b, f in zip(lam_batch, lam_full)),
                           "grad_norm_batch_over_full_median": statistics.median(b / f for b, f in zip(g_batch, g_full))}
    for name, lam in (("full", lam_full), ("batch", lam_batch)):
        for edge_name, edge in (("full", edge_full), ("batch", edge_batch)):
            out[f"{name}/{edge_name}"] = _tracking(t, lam, edge, window)
    return out

