"""Claim A4 of the escape study from the bad minimizers of ``escape-a3``: SA with perturbation batch B = 1
escapes fastest, tr_B1 < tr_B64 ≤ tr_B128 (Ahn et al. 2024), with ρ and η′ unscaled beside the scaled form.

The escape study ran A4 with ρ and η′ both scaled by √(B/128) (B = 1 perturbs 11× less than B = 128), one seed.
Here, from each of ``escape-a3``'s three bad minimizers (the same ``pretrain-m<m>`` and ``finetune-m<m>``
stages, so a folder of that study is reused as it is):

* **Arms** (SA on an independent perturbation batch of B examples, A3's ``sa`` setting otherwise: batch
  128, η = 0.001, the minimizer's seed, ``steps`` steps): for B in the scale's :data:`BATCHES` below the
  main batch, ``sa-b<B>-m<m>`` at the *unscaled* ρ and η′, and ``sa-b<B>-scaled-m<m>`` at ρ·√(B/B₀) and
  η′·√(B/B₀) (``batch_scaling="rho+lr"`` with ``reference_batch`` B₀ = the main batch); B = B₀ is A3's own
  ``sa-m<m>``, the same in both forms.
* **Readings** at each run's end: :func:`~sharpscope.experiments.studies.escape_a3.reading` (tr(H) by Hutch++
  and on the probes every model shares, the exact Jacobian trace, the training loss on all clean images).
* **Statistics**: per form, B = 1 − B = B₁ and B₁ − B₀ (and B = 1 − B₀), paired over minimizers with the
  paired-probe error (:func:`~sharpscope.experiments.studies.escape_a3.compare`), for tr(H), for tr(H)/L
  (the loss scale of cross entropy removed: every reading's probe values divided by its own training loss)
  and for the Jacobian trace. The claim per form: B = 1 − B₁ below 0 (:func:`~sharpscope.experiments.verdicts
  .judge_difference`) and B₁ − B₀ at most 0 (non-inferiority at margin 0); the headline verdict is tr(H) with
  ρ and η′ unscaled, the scaled form and the loss-free readings beside it. A form whose runs end with a
  training loss above :data:`LEFT_FACTOR` times the minimizer's has left the minimizer (:func:`form_verdict`).
* **At equal loss** beside it (:func:`at_equal_loss`): each smaller batch's end against SA at the main batch
  read at its kept checkpoint of the nearest training loss.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from sharpscope.errors import ConfigError
from sharpscope.experiments import verdicts
from sharpscope.experiments.detectable import Assumption, plan
from sharpscope.experiments.studies import escape_a3
from sharpscope.experiments.studies.escape import without_data
from sharpscope.experiments.studies.escape_a3 import (
    compare,
    comparison_verdict,
    one_figure,
    reading,
    rejudged,
    sa_step_at,
    stage,
)
from sharpscope.experiments.studies.framework import DrawnFigures, Stage, Study
from sharpscope.experiments.verdicts import Verdict
from sharpscope.io.readings import A4Results, Contrast, ModelReading, Pair, PairedComparison
from sharpscope.io.studysummary import StudySummary
from sharpscope.track import RunDirectory, TrainConfig

BATCHES: dict[str, tuple[int, int, int]] = {"smoke": (1, 16, 32), "cpu": (1, 64, 128)}
"""Perturbation batches B per scale: 1, the middle one B₁, and the main batch B₀ (A3's ``sa``)."""
FORMS = ("unscaled", "scaled")
SHARED = ("pretrain", "finetune", "sa")  # escape-a3's stages this study reuses
LEFT_FACTOR = 2.0
"""A run *left* its bad minimizer when its training loss at the end is above this multiple of the minimizer's
(SA at the main batch lowers it by about 30%): its end is no minimizer, flatter or not."""
QUANTITIES = {"trace_paired": "tr(H)", "trace_per_loss": "tr(H)/L", "jacobian_trace": "Jacobian trace"}


def batches(scale: str) -> tuple[int, int, int]:
    """The perturbation batches of ``scale`` (the last is the main batch)."""
    if scale not in BATCHES:
        raise ConfigError(f"study 'escape-a4' has the scales {', '.join(BATCHES)} (it is sized for one CPU core), "
                          f"got {scale!r}", argument="scale")
    sc = escape_a3.sizes(scale)
    out = BATCHES[scale]
    assert out[-1] == min(128, sc.n), "the largest perturbation batch is the main batch"
    return out


def arm(b: int, form: str, m: int, full: int) -> str:
    """The stage of SA with perturbation batch ``b`` in ``form`` from minimizer ``m`` (``full``: A3's ``sa``)."""
    return stage("sa", m) if b == full else stage(f"sa-b{b}" + ("-scaled" if form == "scaled" else ""), m)


def _batch_arm(base: Stage, b: int, form: str, full: int):  # noqa: ANN202 - a Stage builder
    """A3's SA stage ``base`` with perturbation batch ``b``; ``scaled``: ρ and η′ times √(b/full)."""

    def build(scale: str, out_dir: Path) -> TrainConfig:
        cfg = base.build(scale, out_dir)
        cfg.keep_checkpoints = False  # read at its end only
        cfg.optimizer_kwargs["batch_size"] = b
        if form == "scaled":
            cfg.optimizer_kwargs.update(batch_scaling="rho+lr", reference_batch=full)
        return cfg

    return build


def stages(scale: str) -> list[Stage]:
    """Per minimizer: ``escape-a3``'s pre-training, fine-tuning and SA, then SA at the smaller batches."""
    *small, full = batches(scale)
    out: list[Stage] = []
    for s in escape_a3.stages(scale):
        if s.name.rsplit("-m", 1)[0] not in SHARED:
            continue
        out.append(s)
        if s.name.startswith("sa-"):
            m = int(s.name.rsplit("-m", 1)[1])
            out += [Stage(arm(b, form, m, full), _batch_arm(s, b, form, full), init_from=stage("finetune", m))
                    for form in FORMS for b in small]
    return out


def prepare(scale: str, out_dir: Path, options: Mapping[str, Any]) -> dict[str, Any]:
    """``escape-a3``'s data and plan, with the perturbation batches."""
    if options:
        raise ConfigError(f"study 'escape-a4' takes no options, got {sorted(options)}")
    bs = batches(scale)
    info = escape_a3.prepare(scale, out_dir, {})
    info["plan"].update(batches=list(bs), scaling=f"ρ and η′ times √(B/{bs[-1]}) in the scaled form")
    return info


def detectable(scale: str) -> list[dict[str, Any]]:
    """A4's smallest detectable effects before any run: paired over the bad minimizers, in units of the sd of
    the per-minimizer differences (no pilot), 95% interval, 80% power."""
    n = len(escape_a3.sizes(scale).minimizers)
    b1 = batches(scale)[1]
    src = "paired over the bad minimizers: in units of the sd of the per-minimizer differences (no pilot)"
    return plan([Assumption("A4", f"tr(H), B = 1 − B = {b1}, ρ and η′ {form}", n, n, 1.0, 0.0, 0.0, src)
                 for form in FORMS])


def _pairs(small: Sequence[ModelReading], large: Sequence[ModelReading]) -> list[Pair]:
    return [Pair(a, b) for a, b in zip(small, large, strict=True)]


def evaluate(dirs: Mapping[str, Path]) -> dict[str, Any]:
    """Readings at each run's end, the paired differences between batches per form, and the A4 verdict."""
    if not dirs:
        return {}
    out = next(iter(dirs.values())).parent
    scale = TrainConfig.from_dict(RunDirectory(next(iter(dirs.values()))).read_config()).scale or "cpu"
    sc, bs = escape_a3.sizes(scale), batches(scale)
    one, mid, full = bs
    ms = [m for m in sc.minimizers if all(arm(b, f, m, full) in dirs for b in bs for f in FORMS)]
    if len(ms) < 2:
        return {"A4": {"verdict": verdicts.NOT_RUN, "reason": "fewer than 2 minimizers have all their arms"}}
    reads = {f: {b: [reading(out / arm(b, f, m, full), sc) for m in ms] for b in bs} for f in FORMS}
    comparisons: dict[str, dict[str, Contrast]] = {f: {} for f in FORMS}
    for f in FORMS:
        for a, b in ((one, mid), (mid, full), (one, full)):
            pairs = _pairs(reads[f][a], reads[f][b])
            comparisons[f][f"{a}-{b}"] = Contrast(judged=_judged(_comparing(pairs), a, b, bs, f),
                                                  train_loss=[p.sa.train_loss - p.arm.train_loss for p in pairs])
    start = [reading(out / stage("finetune", m), sc) for m in ms]
    gone = {f: left(reads[f], start) for f in FORMS}
    results = A4Results(list(bs), ms, start, reads, comparisons,
                        {f: at_equal_loss(out, sc, ms, reads[f], gone[f], bs, f) for f in FORMS})
    return {**results.to_dict(), "A4": a4_verdict(results)}


def _comparing(pairs: Sequence[Pair]) -> Callable[[str, bool, str], PairedComparison]:
    """``(quantity, at_most, what) ↦`` :func:`~sharpscope.experiments.studies.escape_a3.compare` of ``pairs``, lower
    being better."""
    return lambda q, at_most, what: compare(pairs, q, better="lower", what=what, at_most=at_most)


def _judged(judge_one: Callable[[str, bool, str], PairedComparison], a: int, b: int, bs: Sequence[int], form: str,
            equal: bool = False) -> dict[str, PairedComparison]:
    """Each of :data:`QUANTITIES` for B = ``a`` − B = ``b`` in ``form``, by ``judge_one(quantity, at_most, what)``,
    lower being better: at most 0 for the middle batch against the main one, below 0 otherwise."""
    at_most = (a, b) == (bs[1], bs[2])
    where = " at equal loss" if equal else ""
    return {q: judge_one(q, at_most, f"{label} B = {a} − B = {b}{where} ({form})") for q, label in QUANTITIES.items()}


def a4_verdict(results: A4Results) -> dict[str, Any]:
    """The A4 verdict from the study's numbers (:func:`evaluate`'s ``results`` without ``A4``): per form,
    tr(H), tr(H)/L and the Jacobian trace ordered between batches at the end (:func:`form_verdict` with the runs
    that left their minimizer, :func:`left`) and at equal loss; the headline is tr(H) with ρ and η′ unscaled."""
    one, mid, full = bs = results.batches
    parts: dict[str, dict[str, Verdict]] = {}
    for f in FORMS:
        cmp = results.comparisons[f]
        parts[f] = {label: verdicts.combine({
            f"B = 1 < B = {mid}": comparison_verdict(cmp[f"{one}-{mid}"].judged[q]),
            f"B = {mid} ≤ B = {full}": comparison_verdict(cmp[f"{mid}-{full}"].judged[q])})
            for q, label in QUANTITIES.items()}
    gone = {f: left(results.readings[f], results.start) for f in FORMS}
    heads = {f: form_verdict(parts[f]["tr(H)"], gone[f], one) for f in FORMS}
    equal = {f: equal_loss_verdict(results.at_equal_loss[f], bs) for f in FORMS}
    head = heads["unscaled"]
    return {"criterion": f"at each run's end, tr(H) of B = 1 − B = {mid} below 0 and of B = {mid} − B = {full} "
                         "at most 0 (95% intervals over the bad minimizers, with the paired-probe error), "
                         "with ρ and η′ unscaled; the scaled form, tr(H)/L and the Jacobian trace beside it",
            "minimizers": len(results.minimizers), "verdict": head.label, "mde": head.mde,
            "reason": f"ρ and η′ unscaled: {head.text()} | scaled by √(B/{full}): {heads['scaled'].text()}",
            "at_equal_loss": {f: v.to_json() for f, v in equal.items()},
            "scaled": heads["scaled"].to_json(), "left_minimizer": {f: {str(b): v for b, v in g.items()}
                                                                   for f, g in gone.items()},
            "parts": {f: {k: v.to_json() for k, v in p.items()} for f, p in parts.items()}}


def rejudge(results: Mapping[str, Any]) -> dict[str, Any]:
    """A4 judged again from a stored study summary's ``results`` (:func:`evaluate`'s): every comparison, at the
    end and at equal loss, from its stored per-minimizer differences and estimator error
    (:func:`~sharpscope.experiments.studies.escape_a3.rejudged`), then :func:`a4_verdict`. The readings themselves
    are not repeated."""
    if not results.get("readings"):  # not run: nothing to judge again
        return {"A4": dict(results.get("A4") or {})}
    stored = A4Results.from_dict(results)

    def again(c: Contrast, key: str, form: str, equal: bool) -> Contrast:
        """The stored contrast ``key`` (``"<a>-<b>"``: B = a − B = b) judged again."""
        if c.skipped is not None:
            return c
        a, b = (int(x) for x in key.split("-"))
        return replace(c, judged=_judged(
            lambda q, at_most, what: rejudged(c.judged[q], better="lower", what=what, at_most=at_most),
            a, b, stored.batches, form, equal))

    new = replace(stored, comparisons={f: {key: again(c, key, f, False) for key, c in cmp.items()}
                                       for f, cmp in stored.comparisons.items()},
                  at_equal_loss={f: {key: again(c, key, f, True) for key, c in cmp.items()}
                                 for f, cmp in stored.at_equal_loss.items()})
    written = new.to_dict()
    return {"comparisons": written["comparisons"], "at_equal_loss": written["at_equal_loss"], "A4": a4_verdict(new)}


def at_equal_loss(out: Path, sc: escape_a3.A3Scale, ms: Sequence[int],
                  reads: Mapping[int, Sequence[ModelReading]], gone: Mapping[int, Sequence[int]], bs: Sequence[int],
                  form: str) -> dict[str, Contrast]:
    """Each smaller batch's end against SA at the main batch where that run's loss is nearest (its kept
    checkpoints, :func:`~sharpscope.experiments.studies.escape_a3.sa_step_at`): B = 1 below it and B₁ at most
    it, in tr(H), tr(H)/L and the Jacobian trace (judged by :func:`equal_loss_verdict`). A batch whose runs left
    the minimizer (:func:`left`) is not matched: SA at the main batch never reaches such a loss."""
    one, mid, full = bs
    out_cmp: dict[str, Contrast] = {}
    for b in (one, mid):
        key = f"{b}-{full}"
        if b in gone:
            out_cmp[key] = Contrast(skipped=f"B = {b} left the bad minimizer")
            continue
        steps = [sa_step_at(out / stage("sa", m), r.train_loss) for m, r in zip(ms, reads[b], strict=True)]
        pairs = _pairs(reads[b], [reading(out / stage("sa", m), sc, step) for m, step in zip(ms, steps, strict=True)])
        out_cmp[key] = Contrast(judged=_judged(_comparing(pairs), b, full, bs, form, True), steps=steps,
                                loss_ratio=[p.sa.train_loss / p.arm.train_loss for p in pairs])
    return out_cmp


def equal_loss_verdict(compared: Mapping[str, Contrast], bs: Sequence[int]) -> Verdict:
    """B = 1 below the main batch and B₁ at most it at equal loss (:func:`at_equal_loss`'s comparisons, tr(H) from
    the shared probes); a batch that left the minimizer is not testable."""
    one, mid, full = bs
    parts: dict[str, Verdict] = {}
    for b in (one, mid):
        cmp = compared[f"{b}-{full}"]
        if cmp.skipped is not None:
            parts[f"B = {b} vs B = {full}"] = Verdict(verdicts.NOT_TESTABLE, cmp.skipped)
        else:
            parts[f"B = {b} {'<' if b == one else '≤'} B = {full}"] = comparison_verdict(cmp.judged["trace_paired"])
    return verdicts.combine(parts)


def left(reads: Mapping[int, Sequence[ModelReading]], start: Sequence[ModelReading]) -> dict[int, list[int]]:
    """Per batch B with any, the positions of the minimizers whose run at B ended with a training loss above
    :data:`LEFT_FACTOR` times the minimizer's (``start``, in the same order)."""
    out = {b: [j for j, (r, s) in enumerate(zip(rs, start, strict=True))
               if r.train_loss > LEFT_FACTOR * s.train_loss] for b, rs in reads.items()}
    return {b: js for b, js in out.items() if js}


def form_verdict(ordering: Verdict, gone: Mapping[int, Sequence[int]], one: int) -> Verdict:
    """The verdict of one form: ``ordering`` (tr(H) between batches at the end) unless a run left its minimizer
    (:func:`left`); then the readings at the end are not of minimizers: does not hold when the B = ``one`` runs
    are among them (the claimed escape loses the fit, as a diverged run does), else not testable."""
    if not gone:
        return ordering
    label = verdicts.DOES_NOT_HOLD if one in gone else verdicts.NOT_TESTABLE
    which = "; ".join(f"B = {b} from {len(js)} minimizer(s)" for b, js in gone.items())
    return Verdict(label, f"runs left the bad minimizer (training loss at the end above {LEFT_FACTOR:g}× the "
                          f"minimizer's): {which}; at the end {ordering.text()}")


def figures(summary: StudySummary) -> DrawnFigures:
    """tr(H), tr(H)/L and the training loss at each run's end against B, per minimizer and form."""
    from sharpscope.plots.escape_a4 import a4_data, draw_a4

    return one_figure(summary, "batches", "readings", a4_data, draw_a4, caption)


def caption(summary: StudySummary, design: Mapping[str, Any]) -> str:
    """The caption of :func:`figures`: the minimizers, batches, ρ, η′, steps and η of ``design``, what each panel
    draws and the scale."""
    results = A4Results.from_dict(summary.results)
    return (f"A4 from {len(results.minimizers)} bad minimizers of escape-a3 (seeds "
            f"{', '.join(map(str, results.minimizers))}): SA with perturbation batch B ∈ "
            f"{{{', '.join(map(str, results.batches))}}} at ρ = {design.get('rho')} and η′ = "
            f"{design.get('lr_perturb')} unscaled (solid) and scaled by √(B/{results.batches[-1]}) (dashed), "
            f"{(design.get('sizes') or {}).get('steps')} steps at η = {design.get('eta')}; each run read at its "
            "end with the probes every model shares. Left: tr(H) (Hutch++); middle: tr(H)/L (the loss scale of "
            "cross entropy removed; log scale); right: the training loss (log scale). One colour per minimizer. Scale "
            f"'{summary.scale}'; measured on CPU. Command: sharpscope reproduce escape-a4 --scale "
            f"{summary.scale} --out runs/escape-a4 --figures figures.")


STUDY = Study("escape-a4", ("A4",), stages, evaluate, prepare=prepare, draw=figures, detectable=detectable,
              without_data=without_data)
