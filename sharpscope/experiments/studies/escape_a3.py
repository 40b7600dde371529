"""Claim A3 of the escape study, designed to decide: SA lowers tr(H) and raises test accuracy more than RS,
and more than its controls (Ahn et al. 2024), compared at equal training loss over several bad minimizers.

The escape study (:mod:`.escape`) could not decide A3: RS and SA ran at different perturbation steps η′,
the trace probes were redrawn at every step, SA ended at a lower loss than the controls, and there was one
bad minimizer. Here:

* **Three bad minimizers** (``minimizers``): for each seed ``m``, pre-train on the confusion set (the same
  images and random labels for every ``m``; the seed varies the initialisation and the batch order) to
  ``pretrain_acc``, then fine-tune on the clean labels to 100% (``pretrain-m<m>``, ``finetune-m<m>``).
  The minimizer is the unit of replication: every interval is over minimizers.
* **The arms from each minimizer** (batch 128, η = 0.001, the minimizer's seed for the batch order, so the
  arms of one minimizer see the same batches): ``sa`` (SA, perturbation along an independent batch's
  gradient, ρ and η′), ``rs`` (RS at the *same* ρ and η′), ``twin`` (SA with ρ = 0: the extra step without
  the perturbation), ``sgd-lrp`` (SGD at η′) and ``sgd`` (SGD at η).
* **Loss-matched stopping**: SA runs ``steps`` steps; every other arm runs until its training loss (all
  clean training images, read every ``check_every`` steps) falls to SA's final loss, at most ``max_steps``.
  An arm that does not get there is compared with SA at the checkpoint of SA's run (it keeps one at every
  loss reading) whose loss is closest to the arm's final loss. Either way the two are compared at equal
  loss, up to the ``check_every`` steps between readings (the ratio of the two losses is recorded).
* **One reading per compared model**, with the probes fixed (:class:`~sharpscope.track.SharpnessTracker`
  with ``probes="fixed"``, one probe seed): tr(H) by Hutch++ with ``trace_matvecs`` products (the same
  probe vectors for every model, so differences come from the weights), its stderr; λ_max by Lanczos; the
  exact Jacobian trace ``(1/n) Σ_i ‖∂f(x_i)/∂w‖_F²`` (free of the cross-entropy loss scale that makes tr(H)
  fall with the loss); train loss and accuracy; and which test images each model classifies right.
* **Statistics** (:mod:`sharpscope.experiments.statistics`): for SA against each arm, the per-minimizer
  differences and their paired interval over minimizers (:func:`~sharpscope.experiments.statistics.paired_difference`)
  carrying the estimator error (:func:`compare`). The tr(H) verdict uses the paired-probe difference
  ``(1/P) Σ_i z_iᵀ(H_SA − H_arm)z_i`` over ``paired_probes`` shared Rademacher vectors, whose standard
  error is that of the difference itself (common random numbers); the Hutch++ readings are compared beside it
  with both stderrs added as if independent. Test accuracy: the per-minimizer paired (McNemar) differences on
  the stored predictions, their interval over minimizers carrying the paired standard error. The minimum
  detectable effect of that design (in units of the between-minimizer sd) is computed before any run.
  Verdicts: :mod:`sharpscope.experiments.verdicts` (SA against RS, then against every control).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sharpscope.curvature.settings import RUN_DEFAULTS
from sharpscope.data import resolve_data
from sharpscope.errors import ConfigError
from sharpscope.experiments import statistics, verdicts
from sharpscope.experiments.detectable import Assumption, plan
from sharpscope.experiments.studies.escape import ETA, data_info, prepare_data, small_network, without_data
from sharpscope.experiments.studies.framework import DrawnFigures, Stage, Study
from sharpscope.experiments.verdicts import Verdict
from sharpscope.io import jsonsafe
from sharpscope.io.atomic import atomic_write_bytes
from sharpscope.io.jsonsafe import as_number
from sharpscope.io.predictions import unpack_correct
from sharpscope.io.readings import A3Results, Contrast, ModelReading, Pair, PairedComparison
from sharpscope.io.rundir import read_measurements, read_summary
from sharpscope.io.studysummary import StudySummary
from sharpscope.track import RunDirectory, TrainConfig


@dataclass(frozen=True)
class A3Scale:
    """The sizes of one scale of the A3 study."""

    n: int  # clean training images (all of them are the probe set and the stopping loss's set)
    test_n: int
    pool: int  # images averaged over pool × pool pixel blocks
    copies: int  # confusion copies of each clean image
    channels: tuple[int, ...]
    pretrain_acc: float
    fit_steps: int  # step cap of pre-training and fine-tuning
    fit_every: int
    steps: int  # SA's run from each minimizer
    max_steps: int  # cap of the loss-matched arms
    check_every: int  # steps between loss readings (and SA's checkpoints)
    trace_matvecs: int  # Hutch++ products of each reading's tr(H)
    paired_probes: int  # Hutchinson probes, the same vectors for every model: paired differences of tr(H)
    lanczos_iter: int
    minimizers: tuple[int, ...]
    rho: float
    lr_perturb: float  # η′, the same for RS, SA and its twin


SCALES: dict[str, A3Scale] = {
    "smoke": A3Scale(n=32, test_n=32, pool=2, copies=2, channels=(4, 8), pretrain_acc=0.5, fit_steps=4, fit_every=2,
                     steps=4, max_steps=6, check_every=2, trace_matvecs=6, paired_probes=4, lanczos_iter=3, minimizers=(0, 1, 2),
                     rho=0.1, lr_perturb=10 * ETA),
    "cpu": A3Scale(n=256, test_n=2000, pool=2, copies=4, channels=(16, 32, 32), pretrain_acc=0.99, fit_steps=4000,
                   fit_every=100, steps=400, max_steps=500, check_every=10, trace_matvecs=100, paired_probes=100,
                   lanczos_iter=10,
                   minimizers=(0, 1, 2), rho=0.1, lr_perturb=10 * ETA),
}

ARMS = ("sa", "rs", "twin", "sgd-lrp", "sgd")
CONTROLS = ("twin", "sgd-lrp", "sgd")
COMPARED = {"trace": ("lower", "tr(H) (Hutch++)"), "trace_paired": ("lower", "tr(H)"),
            "jacobian_trace": ("lower", "Jacobian trace"), "test_acc": ("higher", "test accuracy")}
"""What SA is compared with each arm in (:func:`compare`): the direction that is better and the label."""
READINGS = "readings"  # folder of the cached readings in the study folder
POWER = 0.8


def stage(arm: str, m: int) -> str:
    """The stage of ``arm`` from bad minimizer ``m``: ``"sa-m0"``."""
    return f"{arm}-m{m}"


def sizes(scale: str) -> A3Scale:
    """The sizes of ``scale``; the study has no gpu scale (it is sized for one CPU core)."""
    if scale not in SCALES:
        raise ConfigError(f"study 'escape-a3' has the scales {', '.join(SCALES)} (it is sized for one CPU core), "
                          f"got {scale!r}", argument="scale")
    return SCALES[scale]


def prepare(scale: str, out_dir: Path, options: Mapping[str, Any]) -> dict[str, Any]:
    """The clean and confusion sets (:func:`~sharpscope.experiments.studies.escape.prepare_data`) and the plan:
    minimizers, η, η′, ρ and the sizes (the detectable effects are :func:`detectable`)."""
    if options:
        raise ConfigError(f"study 'escape-a3' takes no options, got {sorted(options)}")
    sc = sizes(scale)
    info = prepare_data(sc, out_dir, {}, pool=sc.pool)
    design = {"minimizers": len(sc.minimizers), "eta": ETA, "lr_perturb": sc.lr_perturb, "rho": sc.rho,
              "sizes": asdict(sc)}
    return {**info, "plan": design}


def detectable(scale: str) -> list[dict[str, Any]]:
    """A3's smallest detectable effects, before any run: paired over the scale's bad minimizers (the interval of
    :func:`compare`), in units of the standard deviation of the per-minimizer differences (no pilot at this
    scale), 95% interval, 80% power."""
    n = len(sizes(scale).minimizers)
    src = "paired over the bad minimizers: in units of the sd of the per-minimizer differences (no pilot)"
    return plan([Assumption("A3", "tr(H), SA − RS at equal loss", n, n, 1.0, 0.0, 0.0, src),
                 Assumption("A3", "test accuracy, SA − RS at equal loss", n, n, 1.0, 0.0, 0.0, src)])


def paired_mde(n: int, sd: float = 1.0, estimator_se: float = 0.0) -> float:
    """The smallest mean difference the paired interval over ``n`` minimizers puts beyond 0 with probability
    :data:`POWER`, for differences of standard deviation ``sd`` and a known estimator error."""
    if n < 2 or not (sd > 0 or estimator_se > 0):
        return math.nan
    return statistics.minimum_detectable_effect(n_a=n, n_b=n, sd_a=sd, sd_b=0.0, estimator_se=estimator_se,
                                                power=POWER)


# ------------------------------------------------------------------------------ configs
def config(scale: str, out_dir: Path, data: str, *, lr: float, steps: int, every: int, seed: int) -> TrainConfig:
    """SGD at ``lr`` (batch 128) on ``data/<data>.npz``, the loss of all clean images read every ``every`` steps
    (no trace during training: the readings are taken afterwards, :func:`reading`). No gradient graph is
    cached between the two products of each reading (the setting the committed cpu run was made with)."""
    sc = sizes(scale)
    path = (out_dir / "data" / f"{data}.npz").resolve()
    return TrainConfig(model=small_network(list(sc.channels), data_info(out_dir)), data=f"npz:{path}", loss="ce",
                       optimizer="sgd", optimizer_kwargs={"lr": lr}, batch_size=min(128, sc.n),
                       physical_batch_size=500, steps=steps, measure_every=every, checkpoint_every=every,
                       seed=seed, probe_seed=0, probes="fixed", device="cpu",
                       curvature=RUN_DEFAULTS.replace(k=1, max_iter=2, cache_graphs=False))


def _fit(data: str, m: int):  # noqa: ANN202 - a Stage builder
    def build(scale: str, out_dir: Path) -> TrainConfig:
        sc = sizes(scale)
        cfg = config(scale, out_dir, data, lr=0.1, steps=sc.fit_steps, every=sc.fit_every, seed=m)
        cfg.stop_at_train_acc = 1.0 if data == "clean" else sc.pretrain_acc
        return cfg

    return build


def _arm(arm: str, m: int):  # noqa: ANN202 - a Stage builder
    """Arm ``arm`` from minimizer ``m``; every arm but SA stops at SA's final training loss."""

    def build(scale: str, out_dir: Path) -> TrainConfig:
        sc = sizes(scale)
        lr = sc.lr_perturb if arm == "sgd-lrp" else ETA
        cfg = config(scale, out_dir, "clean", lr=lr, steps=sc.steps if arm == "sa" else sc.max_steps,
                     every=sc.check_every, seed=m)
        if arm in ("sa", "rs", "twin"):
            cfg.optimizer = "rs" if arm == "rs" else "sa"
            cfg.optimizer_kwargs.update(rho=0.0 if arm == "twin" else sc.rho, lr_perturb=sc.lr_perturb, eps0=0.0,
                                        tolerance_branch=False)
            if arm == "rs":
                cfg.optimizer_kwargs["perturbation_batch"] = "same"
            else:
                cfg.optimizer_kwargs.update(perturbation_batch="independent", batch_size=min(128, sc.n))
        if arm == "sa":
            cfg.keep_checkpoints = True  # SA is read at its checkpoint nearest an arm's final loss
        else:
            cfg.stop_at_train_loss = final_loss(out_dir / stage("sa", m))
        return cfg

    return build


def final_loss(run_dir: Path) -> float:
    """The training loss of a finished run's last reading."""
    records = read_measurements(run_dir)
    loss = records[-1].train_loss if records else None
    if not isinstance(loss, float) or not math.isfinite(loss):
        raise ConfigError(f"{run_dir} has no training-loss reading to stop the other arms at")
    return loss


def stages(scale: str) -> list[Stage]:
    """Per minimizer: pre-training, fine-tuning, SA, then the arms that stop at SA's final loss."""
    sc = sizes(scale)
    out: list[Stage] = []
    for m in sc.minimizers:
        out += [Stage(stage("pretrain", m), _fit("pretrain", m)),
                Stage(stage("finetune", m), _fit("clean", m), init_from=stage("pretrain", m))]
        out += [Stage(stage(a, m), _arm(a, m), init_from=stage("finetune", m),
                      after=() if a == "sa" else (stage("sa", m),)) for a in ARMS]
    return out


# ------------------------------------------------------------------------------ readings
def reading(run_dir: Path, sc: A3Scale, step: int | None = None) -> ModelReading:
    """The model of ``run_dir`` at checkpoint ``step`` (None: the latest) read once on all clean images
    (:class:`~sharpscope.io.readings.ModelReading`): Hutch++ with ``trace_matvecs`` products and ``paired_probes``
    Rademacher probes, both from seed 0 at every model; cached in ``readings/`` (read again when the scale's
    reading sizes differ from the cached ones)."""
    from sharpscope.curvature import Objective, hutchinson
    from sharpscope.losses import get_loss
    from sharpscope.measures import SharpnessSettings
    from sharpscope.track import SharpnessTracker
    from sharpscope.track.build import build_model, load_initial_weights

    run = RunDirectory(run_dir)
    kept = dict(run.checkpoints())
    if not kept or (step is not None and step not in kept):
        raise ConfigError(f"{run_dir} has no checkpoint {'to read' if step is None else f'of step {step}'}")
    step = max(kept) if step is None else int(step)
    cache = run_dir.parent / READINGS / f"{run_dir.name}@{step}.json"
    settings = {"trace_matvecs": sc.trace_matvecs, "paired_probes": sc.paired_probes, "lanczos_iter": sc.lanczos_iter}
    if cache.is_file():
        cached = ModelReading.from_dict(jsonsafe.loads(cache.read_text(encoding="utf-8")))
        if cached.settings == settings:
            return cached
    cfg = TrainConfig.from_dict(run.read_config())
    model, spec = build_model(cfg, torch.device("cpu"), torch.float32)
    where = load_initial_weights(str(kept[step]), model, spec)
    clean_file = f"npz:{(run_dir.parent / 'data' / 'clean.npz').resolve()}"
    clean, test_set = resolve_data(clean_file, train=True), resolve_data(clean_file, train=False)
    tracker = SharpnessTracker((clean.x, clean.y), get_loss("ce"), every=1, test_data=test_set,
                               curvature=RUN_DEFAULTS.replace(k=1, max_iter=sc.lanczos_iter, trace_method="hutch++",
                                                              cache_graphs=False,
                                                              trace_matvecs=sc.trace_matvecs),
                               trace=True, threshold=None, warm_start=False, seed=0, probes="fixed",
                               test_predictions=True, sharpness=("jacobian",),
                               sharpness_settings=SharpnessSettings(trace="exact"), batch_size=500)
    rec = tracker.measure(step, model)
    objective = Objective(model, get_loss("ce"), (clean.x, clean.y), batch_size=500)
    paired = hutchinson(RUN_DEFAULTS.hessian(objective), sc.paired_probes, seed=0)
    out = ModelReading(run=run_dir.name, step=step, checkpoint=where, train_loss=as_number(rec.train_loss),
                       train_acc=rec.train_acc, test_acc=rec.test_acc, test_correct=rec.test_correct,
                       trace=as_number(rec.trace_estimate), trace_stderr=as_number(rec.trace_stderr),
                       lambda_max=as_number(rec.lambda_max), jacobian_trace=as_number(rec.sharpness_value("jacobian")),
                       trace_samples=paired.samples.tolist(), trace_paired=paired.estimate,
                       hvps=rec.total_hvps + paired.hvps, seconds=rec.total_seconds + paired.seconds,
                       probe_examples=len(clean.y), settings=settings,
                       test_examples=len(test_set.y), errors=rec.errors)
    atomic_write_bytes(cache, (jsonsafe.dumps(out.to_dict(), indent=1) + "\n").encode())
    return out


def _loss_series(run_dir: Path) -> list[tuple[int, float]]:
    return [(m.step, m.train_loss) for m in read_measurements(run_dir)
            if isinstance(m.train_loss, float) and math.isfinite(m.train_loss)]


def sa_step_at(sa_dir: Path, loss: float) -> int:
    """The reading (a kept checkpoint) of SA's run whose training loss is closest to ``loss`` in log scale."""
    series = [(s, value) for s, value in _loss_series(sa_dir) if value > 0]
    return min(series, key=lambda sv: abs(math.log(sv[1] / loss)))[0]


def matched_pair(out: Path, arm: str, m: int, sc: A3Scale) -> Pair:
    """SA and ``arm`` from minimizer ``m`` read at equal loss: the arm at its stop (SA's final loss) when it got
    there, else SA where its run passes the arm's final loss."""
    arm_dir, sa_dir = out / stage(arm, m), out / stage("sa", m)
    summary = read_summary(arm_dir)
    status = None if summary is None else summary.status
    other = reading(arm_dir, sc)
    if status == "reached_train_loss":
        sa, how = reading(sa_dir, sc), "the arm stopped at SA's final loss"
    else:
        sa = reading(sa_dir, sc, sa_step_at(sa_dir, other.train_loss))
        how = "SA read at its checkpoint closest to the arm's final loss"
    return Pair(sa, other, matched=how, status=status,
                loss_ratio=other.train_loss / sa.train_loss if sa.train_loss > 0 else math.nan)


def _rms(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return math.sqrt(sum(v * v for v in finite) / len(finite)) if finite else 0.0


def compare(pairs: Sequence[Pair], quantity: str, *, better: str, what: str, at_most: bool = False) -> PairedComparison:
    """SA − arm of ``quantity`` over minimizers, judged in direction ``better`` (``at_most``: the claim "SA is
    no worse than the arm", :func:`~sharpscope.experiments.verdicts.judge_non_inferiority` with margin 0).

    The interval is :func:`~sharpscope.experiments.statistics.paired_difference` with the estimator error the
    minimizers do not vary (the root mean square of the per-minimizer errors, not divided by their number: the
    probes and the test set are shared):

    * ``trace``: Hutch++ readings, error ``√(se_SA² + se_arm²)`` (as if independent: conservative);
    * ``trace_paired``: the mean over the shared Hutchinson probes of ``z_iᵀ(H_SA − H_arm)z_i``, error
      ``sd_i/√P`` of those ``P`` paired differences (common random numbers: the probe noise of the difference);
    * ``trace_per_loss``: as ``trace_paired`` for ``z_iᵀH_SA z_i / L_SA − z_iᵀH_arm z_i / L_arm`` (tr(H)/L, free
      of the cross-entropy loss scale to first order; the losses are exact on the probe set);
    * ``test_acc``: :func:`~sharpscope.experiments.statistics.paired_accuracy` on the stored predictions;
    * ``jacobian_trace``: exact, no estimator error.
    """
    per: list[float] = []
    ses: list[float] = []
    for p in pairs:
        sa, arm = p.sa, p.arm
        if quantity == "test_acc":
            d = statistics.paired_accuracy(*(unpack_correct(r.test_correct or {}) for r in (sa, arm)))
            per.append(d.estimate)
            ses.append(d.se)
        elif quantity in ("trace_paired", "trace_per_loss"):
            a, b = (np.asarray(r.trace_samples, dtype=float) for r in (sa, arm))
            diffs = a / sa.train_loss - b / arm.train_loss if quantity == "trace_per_loss" else a - b
            per.append(float(diffs.mean()))
            ses.append(float(diffs.std(ddof=1)) / math.sqrt(diffs.size) if diffs.size > 1 else math.nan)
        else:
            per.append(getattr(sa, quantity) - getattr(arm, quantity))
            ses.append(math.hypot(sa.trace_stderr, arm.trace_stderr) if quantity == "trace" else 0.0)
    return judge(per, _rms(ses), better=better, what=what, at_most=at_most)


def judge(per: Sequence[float], se: float, *, better: str, what: str, at_most: bool = False) -> PairedComparison:
    """The per-minimizer differences ``per`` with the estimator error ``se`` the minimizers do not vary, judged:
    their paired interval (:func:`~sharpscope.experiments.statistics.paired_difference`), the MDE of that design
    (:func:`paired_mde` at the differences' sd) and the verdict in direction ``better`` (``at_most``: no worse,
    at margin 0). :func:`compare` ends here, and so does judging a stored comparison again (:func:`rejudge`)."""
    d = statistics.paired_difference(per, estimator_se=se)
    sd = float(np.std(per, ddof=1)) if len(per) >= 2 else math.nan
    mde = paired_mde(len(per), sd, se) if math.isfinite(sd) else math.nan
    known = mde if math.isfinite(mde) else None
    v = (verdicts.judge_non_inferiority(d, margin=0.0, better=better, mde=known, what=what) if at_most else
         verdicts.judge_difference(d, better=better, mde=known, what=what))
    return PairedComparison(list(per), d.estimate, [d.low, d.high], d.se, d.df, d.p_value, d.method, v.mde,
                            v.label, v.reason, se)


def rejudged(stored: PairedComparison, *, better: str, what: str, at_most: bool = False) -> PairedComparison:
    """A stored comparison (:func:`compare`) judged again from its per-minimizer differences and estimator error
    (:func:`judge`)."""
    return judge([float(x) for x in stored.per_minimizer], float(stored.estimator_se), better=better, what=what,
                 at_most=at_most)


def evaluate(dirs: Mapping[str, Path]) -> dict[str, Any]:
    """Readings at equal loss, SA − each arm over minimizers, and the A3 verdict."""
    if not dirs:
        return {}
    out = next(iter(dirs.values())).parent
    cfg = TrainConfig.from_dict(RunDirectory(next(iter(dirs.values()))).read_config())
    sc = sizes(cfg.scale or "cpu")
    ms = [m for m in sc.minimizers if all(stage(a, m) in dirs for a in ARMS)]
    if not ms:
        return {"A3": {"verdict": verdicts.NOT_RUN, "reason": "no minimizer has all its arms"}}
    minimizers = {m: reading(out / stage("finetune", m), sc) for m in ms}
    comparisons: dict[str, Contrast] = {}
    for arm in ("rs", *CONTROLS):
        pairs = [matched_pair(out, arm, m, sc) for m in ms]
        comparisons[arm] = Contrast(pairs=pairs, judged={q: compare(pairs, q, better=better, what=f"{label} SA − {arm}")
                                                         for q, (better, label) in COMPARED.items()})
    return {**A3Results(minimizers, comparisons).to_dict(), "A3": a3_verdict(comparisons, len(ms))}


def rejudge(results: Mapping[str, Any]) -> dict[str, Any]:
    """A3 judged again from a stored study summary's ``results`` (:func:`evaluate`'s): every comparison from its
    stored per-minimizer differences and estimator error (:func:`rejudged`), then :func:`a3_verdict`. The readings
    themselves are not repeated."""
    if not results.get("comparisons"):  # not run: nothing to judge again
        return {"A3": dict(results.get("A3") or {})}
    stored = A3Results.from_dict(results)
    comparisons = {arm: Contrast(judged={q: rejudged(c.judged[q], better=better, what=f"{label} SA − {arm}")
                                         for q, (better, label) in COMPARED.items()})
                   for arm, c in stored.comparisons.items()}
    return {"comparisons": {arm: c.to_dict() for arm, c in comparisons.items()},
            "A3": a3_verdict(comparisons, len(stored.minimizers))}


def _parts(cmp: Contrast) -> Verdict:
    return verdicts.combine({"tr(H)": comparison_verdict(cmp.judged["trace_paired"]),
                             "test accuracy": comparison_verdict(cmp.judged["test_acc"])})


def comparison_verdict(d: PairedComparison) -> Verdict:
    """The :class:`Verdict` a comparison (:func:`compare`) holds, with its MDE when finite."""
    return Verdict(d.verdict, d.reason, d.mde if isinstance(d.mde, float) and math.isfinite(d.mde) else None)


def a3_verdict(comparisons: Mapping[str, Contrast], minimizers: int) -> dict[str, Any]:
    """SA against RS (tr(H) lower and test accuracy higher, at equal loss), counted only if SA also beats
    every control (:func:`~sharpscope.experiments.verdicts.with_controls`)."""
    main = _parts(comparisons["rs"])
    verdict = verdicts.with_controls(main, {c: _parts(comparisons[c]) for c in CONTROLS if c in comparisons})
    return {"criterion": "at equal training loss, SA − RS below 0 in tr(H) and above 0 in test accuracy (95% "
                         "intervals over the bad minimizers, with the paired-probe and paired test-set errors), and the "
                         "same against its ρ = 0 twin, SGD at η′ and SGD at η",
            "minimizers": minimizers, "vs_rs": main.to_json(), "verdict": verdict.label, "reason": verdict.reason,
            "mde": verdict.mde}


def one_figure(summary: StudySummary, stem: str, needs: str, data: Callable[[Mapping[str, Any]], dict[str, Any]],
               draw: Callable[[Mapping[str, Any]], Any],
               caption: Callable[[StudySummary, Mapping[str, Any]], str]) -> DrawnFigures:
    """The one figure ``stem`` of an escape study: ``draw`` of the plotted numbers ``data`` reads from the
    summary's results, and ``caption(summary, plan)`` with the design the study prepared (``data.plan``); none
    while the results lack ``needs`` (the study has not run)."""
    if not summary.results.get(needs):
        return []
    plotted = data(summary.results)
    return [(stem, draw(plotted), plotted, caption(summary, (summary.data or {}).get("plan") or {}))]


def figures(summary: StudySummary) -> DrawnFigures:
    """tr(H), Jacobian trace and test accuracy of SA and each arm at equal loss, and the differences."""
    from sharpscope.plots.escape_a3 import a3_data, draw_a3

    return one_figure(summary, "matched", "comparisons", a3_data, draw_a3, caption)


def caption(summary: StudySummary, design: Mapping[str, Any]) -> str:
    """The caption of :func:`figures`: the minimizers, η, η′ and ρ of ``design``, what each panel draws, the scale
    and the data."""
    minimizers, info = A3Results.from_dict(summary.results).minimizers, summary.data or {}
    return (f"A3 at equal training loss, from {len(minimizers)} bad minimizers (pre-training seeds "
            f"{', '.join(map(str, minimizers))}; every arm from minimizer m uses seed m, so the arms of one "
            f"minimizer see the same batches); η = {design.get('eta')}, η′ = {design.get('lr_perturb')} and "
            f"ρ = {design.get('rho')} for RS and SA. Top: tr(H) (Hutch++, the same probes for every model; error "
            "bars ± one Hutch++ stderr), the exact Jacobian trace and test accuracy (error bars: the 95% "
            "Wilson interval on the test set) of SA and each arm at the matched point, grey lines joining the two readings from one "
            "minimizer. Bottom: SA − arm per minimizer (tr(H) from the shared Hutchinson probes) and the mean with "
            "its 95% paired interval over minimizers. Scale "
            f"'{summary.scale}' ({info.get('clean_examples')} training inputs of shape "
            f"{'×'.join(map(str, info.get('input_shape') or []))} from {info.get('source')}, a small version of the "
            "paper's experiment); measured "
            f"on CPU. Command: sharpscope reproduce escape-a3 --scale {summary.scale} --out runs/escape-a3 "
            "--figures figures.")


STUDY = Study("escape-a3", ("A3",), stages, evaluate, prepare=prepare, draw=figures, detectable=detectable,
              without_data=without_data)
