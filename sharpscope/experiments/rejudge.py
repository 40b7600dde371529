"""Verdicts recomputed from stored study summaries (``<study>-summary.json``) with the current criteria.

The summaries keep every arm's per-seed values, the matched-loss readings and each run's final record,
so the intervals, MDEs and verdicts of :mod:`sharpscope.experiments.verdicts` can be recomputed without
the run directories. What a summary lacks is said in each result's ``notes``:

* the trace estimator's standard error is stored for each run's last reading only; at a matched loss level
  it is taken as the same relative error (``stderr/tr(H)`` of the run's last reading) times the matched
  value;
* the runs store no per-example predictions, so accuracy differences carry unpaired binomial errors.

``escape-a3`` and ``escape-a4`` store each comparison's per-minimizer differences and estimator error, so their
intervals, MDEs and verdicts are recomputed exactly, by the studies' own judging code.

``python -m sharpscope.experiments.rejudge figures`` reads ``figures/*-summary.json``, writes
``figures/verdicts.json`` and prints one markdown table per study (the tables ``docs/reproductions.md``
quotes).
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from sharpscope.experiments import arms as ac
from sharpscope.experiments import evidence, verdicts
from sharpscope.experiments.report import verdict_text
from sharpscope.experiments.studies import escape as escape_study
from sharpscope.experiments.studies import escape_a3 as a3_study
from sharpscope.experiments.studies import escape_a4 as a4_study
from sharpscope.experiments.studies import flatness as flatness_study
from sharpscope.io import jsonsafe
from sharpscope.io.atomic import atomic_write_bytes
from sharpscope.io.jsonsafe import as_number
from sharpscope.io.records import RunSummary
from sharpscope.io.studysummary import StudySummary, read_study_summary

STDERR_NOTE = ("trace estimator stderr: each run's last reading; at matched loss, the same relative error times the "
               "matched value")
__all__ = ["REJUDGE", "escape", "escape_a3", "escape_a4", "label_noise", "main", "sam_edge", "sam_flatness",
           "smoothing_study", "verdict_table", "with_matched_stderr", "with_stored_stderr"]

PAIRED_NOTE = "no per-example predictions stored: accuracy differences carry unpaired binomial errors"


def _final_trace(stages: Mapping[str, RunSummary], run: str) -> tuple[float, float, float]:
    """``(tr(H), its stderr, training loss)`` of a run's last reading (NaN where missing)."""
    final = stages[run].final_measurement if run in stages else None
    if final is None:
        return math.nan, math.nan, math.nan
    return as_number(final.trace_estimate), as_number(final.trace_stderr), as_number(final.train_loss)


def _runs_of(stages: Mapping[str, RunSummary], arm: str) -> list[str]:
    return [name for name in stages if ac.arm_of(name) == arm]


def with_stored_stderr(arm_summaries: Mapping[str, Any], stages: Mapping[str, RunSummary]) -> dict[str, ac.ArmSummary]:
    """The stored arm summaries with ``trace_stderr`` and ``trace_over_loss_stderr`` from the runs' final readings."""
    out = {}
    for arm, a in _summaries(arm_summaries).items():
        finals = [_final_trace(stages, r) for r in _runs_of(stages, arm)]
        out[arm] = replace(a, end={**a.end, "trace_stderr": evidence.seed_stats([se for _, se, _ in finals]),
                                   "trace_over_loss_stderr": evidence.seed_stats([se / loss if loss > 0 else math.nan
                                                                                  for _, se, loss in finals])})
    return out


def _summaries(stored: Mapping[str, Any]) -> dict[str, ac.ArmSummary]:
    """The arm summaries stored in a study's results (:meth:`arms.ArmSummary.to_dict`)."""
    return {arm: ac.ArmSummary.from_dict(a) for arm, a in stored.items()}


def _relative_stderr(stages: Mapping[str, RunSummary], arm: str) -> list[float]:
    return [se / t if t > 0 else math.nan for t, se, _ in (_final_trace(stages, r) for r in _runs_of(stages, arm))]


def with_matched_stderr(matched: ac.MatchedLoss, stages: Mapping[str, RunSummary]) -> ac.MatchedLoss:
    """A matched-loss reading (:func:`arms.at_matched_loss`) with ``trace_stderr`` per level (see the module
    docstring)."""
    out = ac.MatchedLoss(list(matched.levels), {})
    for arm, q in matched.arms.items():
        rel = _relative_stderr(stages, arm)
        out.arms[arm] = {**q, "trace_stderr": [
            evidence.seed_stats([v * r for v, r in zip(s.values, rel)] if len(rel) == len(s.values)
                                else [math.nan] * len(s.values)) for s in q.get("trace", [])]}
    return out


def _best_eta(arm_summaries: Mapping[str, Any], kind: str) -> float | None:
    """η′ of the sweep's best ``kind`` (``rs`` or ``sa``) by the study's own rule (:func:`arms.best_setting`):
    the lowest final tr(H) among completed runs, preferring those that kept ≥ 99% train accuracy."""
    candidates = []
    for name, a in _summaries(arm_summaries).items():
        m = re.fullmatch(rf"sweep-{kind}(-same|-ind)?-rho([\d.e-]+)-lrp([\d.e-]+)", name)
        score = a.end["trace"].mean if "trace" in a.end else math.nan
        if not m or a.status != ["completed"] or not math.isfinite(score):
            continue
        candidates.append((not a.min_train_acc >= 0.99, score, float(m.group(3)) * escape_study.ETA))
    return min(candidates)[2] if candidates else None


def escape(summary: StudySummary) -> dict[str, Any]:
    """A1–A4 of the escape study with the stored trace errors and the best η′ of SA and RS; A5 not testable."""
    res, stages = summary.results, summary.stages
    summaries = with_stored_stderr(res["arms"], stages)
    matched = with_matched_stderr(ac.MatchedLoss.from_dict((res.get("A3") or {}).get("matched_loss") or {}), stages)
    eta = {arm: e for arm, kind in (("best-sa", "sa"), ("best-rs", "rs"))
           if (e := _best_eta(res["arms"], kind)) is not None}
    out = ac.escape_verdicts(summaries, matched, eta)
    if "A5" in res:
        network = escape_study.network(summary.scale, summary.data or {})
        out["A5"] = _identity(res["A5"], network)
    return {**out, "notes": [STDERR_NOTE, PAIRED_NOTE]}


def _identity(result: Mapping[str, Any], network: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A smoothing-identity result judged again (:func:`smoothing.judge_identity`); its network's non-smooth
    layers as stored, else from the model spec ``network``."""
    from sharpscope.experiments import smoothing
    from sharpscope.models import build_model

    nonsmooth = result.get("nonsmooth")
    if nonsmooth is None and network is not None:
        nonsmooth = smoothing.nonsmooth_parts(build_model(network["name"], **network["kwargs"]))
    v = smoothing.judge_identity(dict(result), nonsmooth or ())
    return {**result, "verdict": v.label, "reason": v.reason}


def smoothing_study(summary: StudySummary) -> dict[str, Any]:
    """A5 on each network of the ``smoothing`` study."""
    return {claim: _identity(r) for claim, r in summary.results.items()}


def escape_a3(summary: StudySummary) -> dict[str, Any]:
    """A3 of the ``escape-a3`` study: every comparison at equal loss judged again from its per-minimizer differences
    (:func:`sharpscope.experiments.studies.escape_a3.rejudge`)."""
    return a3_study.rejudge(summary.results)


def escape_a4(summary: StudySummary) -> dict[str, Any]:
    """A4 of the ``escape-a4`` study: every comparison between batches, at the end and at equal loss, judged again
    from its per-minimizer differences (:func:`sharpscope.experiments.studies.escape_a4.rejudge`)."""
    return a4_study.rejudge(summary.results)


def label_noise(summary: StudySummary) -> dict[str, Any]:
    """G6 of the label-noise study: per-seed Spearman correlations and tr(H) against the noiseless arm at
    the lowest common loss."""
    res, stages = summary.results, summary.stages
    summaries = with_stored_stderr(res["arms"], stages)
    g6 = res.get("G6") or {}
    stored = (g6.get("vs_noiseless") or {}).get("trace_at_lowest_common_loss")
    matched, at_start = None, False
    if stored:  # the lowest common level's per-seed traces are stored with the comparison
        read = dict(zip(("label-noise", "noiseless"), map(evidence.SeedStats.from_dict, (stored["a"], stored["b"]))))
        matched = with_matched_stderr(ac.MatchedLoss([math.nan], {arm: {"trace": [s]} for arm, s in read.items()}),
                                      stages)
        # the lowest common loss level is the shared start when both arms' readings there are their first ones
        at_start = all(s.values == summaries[arm].start["trace"].values for arm, s in read.items())
    vs = ac.versus(summaries["label-noise"], summaries["noiseless"], matched, "label-noise", "noiseless") \
        if "noiseless" in summaries and "label-noise" in summaries else None
    verdict = ac.label_noise_verdict(g6.get("spearman_per_seed") or [], vs, at_start)
    return {"G6": {**{k: g6[k] for k in ("spearman_per_seed", "spearman_after_step_0") if k in g6},
                   "vs_noiseless": None if vs is None else vs.to_dict(), "criterion": g6.get("criterion", ""),
                   **verdict.as_result()},
            "notes": [STDERR_NOTE, PAIRED_NOTE]}


def sam_flatness(summary: StudySummary) -> dict[str, Any]:
    """G1, G3, G4, G5 of the SAM-flatness study from its arm summaries and matched-loss readings."""
    res = summary.results
    matched = ac.MatchedLoss.from_dict(res.get("matched_loss") or {})
    return {**flatness_study.flatness_verdicts(_summaries(res["arms"]), matched), "notes": [PAIRED_NOTE]}


def sam_edge(summary: StudySummary) -> dict[str, Any]:
    """E5's "max λ < 0.8·(2/η)" for each SAM run (λ at initialisation is at most the run's maximum, so the part
    is met at initialisation whenever it is met), and E7 with the three-seed rule."""
    res = summary.results
    out: dict[str, Any] = {}
    for name, r in res.items():
        if "max_lambda_over_2_eta" in r and not name.endswith("rho0"):
            ratio = as_number(r["max_lambda_over_2_eta"])
            v = verdicts.judge_threshold(ratio < 0.8, met_at_start=ratio < 0.8,
                                         reason=f"max λ = {ratio:.3g}·(2/η)")
            out[f"E5-below-2-eta-{name}"] = {"criterion": "max λ < 0.8·(2/η)", "verdict": v.label, "reason": v.reason}
    for prefix in ("mb", "mb-mom"):
        r = res.get(f"E7-{prefix}")
        if not r:
            continue
        pairs, control = r.get("sam_tracks_with") or [], bool(r.get("control_at_its_edge"))
        label = ("holds" if "batch/batch" in pairs else "partly" if pairs else "does not hold" if control else
                 verdicts.NOT_TESTABLE)
        reason = f"{r.get('seeds')} seed(s); tracks with {', '.join(pairs) or 'no pairing'}"
        if not pairs and not control:
            reason += "; the ρ = 0 control does not reach its own edge either"
        if r.get("seeds", 0) < verdicts.MIN_SEEDS and label != verdicts.NOT_TESTABLE:
            label, reason = verdicts.INCONCLUSIVE, f"fewer than {verdicts.MIN_SEEDS} seeds; {reason}"
        out[f"E7-{prefix}"] = {"criterion": r.get("criterion", ""), "verdict": label, "reason": reason}
    return out


REJUDGE: dict[str, Callable[[StudySummary], dict[str, Any]]] = {
    "escape": escape, "escape-a3": escape_a3, "escape-a4": escape_a4, "label-noise": label_noise,
    "sam-flatness": sam_flatness, "sam-edge": sam_edge, "smoothing": smoothing_study}


def verdict_table(study: str, results: Mapping[str, Any]) -> str:
    """One row per claim: the verdict (with the MDE when inconclusive) and its reason."""
    rows = [f"#### {study}", "", "| claim | verdict | reason |", "|---|---|---|"]
    for claim, r in results.items():
        if isinstance(r, Mapping) and "verdict" in r:
            reason = str(r.get("reason", "")).replace("|", "\\|")
            rows.append(f"| {claim} | {verdict_text(r)} | {reason} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    """Rejudge every ``<study>-summary.json`` in the folder ``argv[0]`` (default ``figures``), print the
    tables and write ``verdicts.json`` there; returns the exit status 0."""
    args = sys.argv[1:] if argv is None else argv
    folder = Path(args[0] if args else "figures")
    out: dict[str, Any] = {}
    for study, judge in REJUDGE.items():
        path = folder / f"{study}-summary.json"
        if not path.is_file():
            continue
        out[study] = judge(read_study_summary(path))
        sys.stdout.write(verdict_table(study, out[study]) + "\n\n")
    atomic_write_bytes(folder / "verdicts.json", (jsonsafe.dumps(out, indent=2) + "\n").encode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

