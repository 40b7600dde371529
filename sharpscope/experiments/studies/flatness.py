"""The flatness study (Foret et al.; Kwon et al.; Mi et al.): SGD, SAM, ASAM and Sparse SAM (Fisher and
dynamic masks at 50%) on a BatchNorm-free CIFAR-10 network, over seeds.

Every arm trains the same network from its seed's initialisation with mini-batch SGD (lr 0.05, momentum
0.9, batch 128); SAM uses ρ = 0.05, ASAM ρ = 0.5 (its paper's default), the Sparse SAM arms ρ = 0.05 with
half of the coordinates perturbed. SGD is the control of every claim. Each run measures λ_1..λ_5, tr(H)
(Hutch++) on a fixed subset of the training images, and the test accuracy. The criteria
(:mod:`sharpscope.experiments.arms`) compare arms at the end and at common training-loss levels, over
seeds: near zero loss the cross-entropy curvature scales with the loss, so an arm that ends at a lower
loss looks flatter without being so.

Scales: ``cpu`` — the first 2 000 CIFAR-10 training images, 2 000 test images, a CNN with three
conv-ReLU-maxpool blocks (16-32-64 channels, no normalisation), 1 500 steps, 3 seeds; ``gpu`` — 16 000
images and 64-128-256 channels for 20 000 steps (Foret et al. use WideResNets on all 50 000 images with
augmentation: neither is reproduced). Without the CIFAR-10 files: MNIST-1D and a ReLU MLP.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sharpscope.curvature.settings import RUN_DEFAULTS
from sharpscope.data.root import CIFAR10_TRAIN
from sharpscope.experiments import arms as arm_criteria
from sharpscope.experiments import evidence, statistics, verdicts
from sharpscope.experiments.detectable import Assumption, plan
from sharpscope.experiments.recipes import cifar_data, fc, mnist1d_data
from sharpscope.experiments.studies.framework import Build, Figure, Stage, Study
from sharpscope.experiments.verdicts import Verdict
from sharpscope.track import TrainConfig


@dataclass(frozen=True)
class FlatScale:
    """The sizes of one scale of the study."""

    n: int
    channels: tuple[int, ...]
    steps: int
    measurements: int
    probe_n: int
    seeds: tuple[int, ...]


SCALES = {
    "smoke": FlatScale(n=64, channels=(4, 8), steps=4, measurements=2, probe_n=32, seeds=(0, 1)),
    "cpu": FlatScale(n=2000, channels=(16, 32, 64), steps=1500, measurements=6, probe_n=500, seeds=(0, 1, 2)),
    "gpu": FlatScale(n=16000, channels=(64, 128, 256), steps=20000, measurements=20, probe_n=5000, seeds=(0, 1, 2)),
}
ARMS: dict[str, tuple[str, dict[str, Any]]] = {
    "sgd": ("sgd", {}),
    "sam": ("sam", {"rho": 0.05}),
    "asam": ("sam", {"rho": 0.5, "adaptive": True}),
    "ssam-f": ("sparse-sam", {"rho": 0.05, "sparsity": 0.5, "mask": "fisher", "fisher_samples": 128}),
    "ssam-d": ("sparse-sam", {"rho": 0.05, "sparsity": 0.5, "mask": "dynamic"}),
}


def arm_config(scale: str, arm: str, seed: int) -> TrainConfig:
    """The run of ``arm`` with ``seed`` at ``scale`` (see the module docstring)."""
    sc = SCALES[scale]
    optimizer, extra = ARMS[arm]
    kwargs: dict[str, Any] = {"lr": 0.05, "momentum": 0.9, **extra}
    if extra.get("mask") == "dynamic":
        kwargs.update(total_steps=sc.steps, update_interval=max(1, sc.steps // 30))
    data = cifar_data(sc.n, flatten=False)
    if data is not None:
        if scale == "smoke":
            data["test_n"] = 64
        model = {"name": "cnn", "kwargs": {"in_channels": 3, "num_classes": 10, "channels": list(sc.channels),
                                           "norm": None, "image_size": 32}}
    else:
        data = mnist1d_data(sc.n, 1000 if scale != "smoke" else 64)
        model = fc(40, [4 * c for c in sc.channels], "relu")
    every = max(1, sc.steps // sc.measurements)
    return TrainConfig(model=model, **data, loss="ce", optimizer=optimizer, optimizer_kwargs=kwargs, batch_size=128,
                       probe_n=min(sc.n, sc.probe_n), physical_batch_size=500, steps=sc.steps, measure_every=every,
                       trace=True, checkpoint_every=every, seed=seed, probe_seed=0,
                       device="auto" if scale == "gpu" else "cpu",
                       curvature=RUN_DEFAULTS.replace(k=5, tol=1e-3, max_iter=40 if scale != "smoke" else 10,
                                                      trace_method="hutch++",
                                                      trace_matvecs=20 if scale != "smoke" else 6))


def stages(scale: str) -> list[Stage]:
    """One run per arm and seed."""
    def build(arm: str, seed: int) -> Build:
        return lambda sc, _: arm_config(sc, arm, seed)

    return [Stage(f"{arm}-s{seed}", build(arm, seed)) for arm in ARMS for seed in SCALES[scale].seeds]


def _acc_vs(a: arm_criteria.ArmSummary, b: arm_criteria.ArmSummary, margin: float) -> dict[str, Any]:
    """``a``'s test accuracy no worse than ``b``'s by more than ``margin`` (a non-inferiority test on the 95%
    interval of ``a − b`` over seeds, with both binomial errors: :func:`arm_criteria.accuracy_comparison`)."""
    cmp = arm_criteria.accuracy_comparison(a, b)
    d = cmp.difference
    v = verdicts.judge_non_inferiority(d, margin=margin, mde=cmp.mde)
    return {"difference_points": 100 * d.estimate, "interval_points": [100 * d.low, 100 * d.high],
            "stderr_points": 100 * cmp.binomial_stderr, "mde_points": 100 * cmp.mde,
            "seeds": min(d.n_a, d.n_b), "margin_points": 100 * margin, "verdict": v.label, "reason": v.reason,
            "mde": cmp.mde}


def _lambda_lower(a: Sequence[float], b: Sequence[float]) -> evidence.Comparison:
    return evidence.compare_seeds(list(a), list(b), lower_is_better=True)


def _ratio_verdict(sgd: Sequence[float], sam: Sequence[float], factor: float) -> Verdict:
    """``λ_max(SGD)/λ_max(SAM) ≥ factor``, judged on the ratio of geometric means over seeds: Welch's interval of
    the difference of mean logs, exponentiated. Holds when the interval lies above ``factor``, does not hold
    when it lies below."""
    logs = [[math.log(v) if v > 0 else math.nan for v in map(float, x)] for x in (sgd, sam)]
    d = statistics.welch_difference(logs[0], logs[1])
    lo, hi, mid = math.exp(d.low), math.exp(d.high), math.exp(d.estimate)
    text = f"ratio of geometric means {mid:.3g}, 95% interval [{lo:.3g}, {hi:.3g}]"
    if min(d.n_a, d.n_b) < verdicts.MIN_SEEDS or not d.defined:
        return Verdict(verdicts.INCONCLUSIVE, f"{text}: fewer than {verdicts.MIN_SEEDS} seeds or no interval")
    if lo >= factor:
        return Verdict(verdicts.HOLDS, text)
    if hi < factor:
        return Verdict(verdicts.DOES_NOT_HOLD, f"{text}, below {factor:g}")
    return Verdict(verdicts.INCONCLUSIVE, f"{text} reaches {factor:g}")


def flatness_verdicts(summaries: Mapping[str, arm_criteria.ArmSummary],
                      matched: arm_criteria.MatchedLoss) -> dict[str, Any]:
    """G1, G3, G4, G5 from arm summaries and the matched-loss readings (:func:`arm_criteria.at_matched_loss`)."""
    out: dict[str, Any] = {}
    sam, sgd = summaries["sam"], summaries["sgd"]
    g1 = arm_criteria.accuracy_comparison(sam, sgd)
    out["G1"] = {"sam_minus_sgd_points": 100 * g1.difference.estimate,
                 "interval_points": [100 * g1.difference.low, 100 * g1.difference.high],
                 "mde_points": 100 * g1.mde, "stderr_points": 100 * g1.binomial_stderr,
                 "criterion": "SAM's test accuracy above SGD's (95% interval of the difference over seeds, with the "
                              "binomial error of the test set)",
                 "verdict": g1.verdict.label, "reason": g1.verdict.reason, "mde": g1.mde}
    ratio_end = sgd.end["lambda_max"].mean / sam.end["lambda_max"].mean
    has_matched = matched.compares("sam", "sgd")
    low_sgd, low_sam = (matched.lowest(a, "lambda_max") for a in ("sgd", "sam"))
    ratio_matched = low_sgd.mean / low_sam.mean if has_matched else math.nan
    lower = _lambda_lower(sam.end["lambda_max"].values, sgd.end["lambda_max"].values)
    at_loss = _lambda_lower(low_sam.values, low_sgd.values) if has_matched else None
    ratio = (_ratio_verdict(low_sgd.values, low_sam.values, 5.0)
             if has_matched else Verdict(verdicts.NOT_RUN, "no common loss level"))
    parts = {"lower at the end": lower.verdict,
             "lower at the lowest common loss": (at_loss.verdict if at_loss else
                                                 Verdict(verdicts.NOT_RUN, "no common loss level")),
             "ratio ≥ 5 at the lowest common loss": ratio}
    g3 = verdicts.combine(parts)
    out["G3"] = {"lambda_max_sgd_over_sam_end": ratio_end, "lambda_max_sgd_over_sam_at_lowest_common_loss":
                 ratio_matched, "sam_lower_end": lower.to_dict(),
                 "sam_lower_at_matched_loss": None if at_loss is None else at_loss.to_dict(),
                 "lambda1_over_lambda5_sgd_sam": [sgd.end["lambda1_over_lambda5"].mean,
                                                  sam.end["lambda1_over_lambda5"].mean],
                 "criterion": "λ_max(SGD)/λ_max(SAM) ≥ 5, and SAM lower (95% interval) at the end and at the lowest "
                              "common training loss",
                 "verdict": g3.label, "reason": g3.reason, "mde": g3.mde}
    if "asam" in summaries:
        g4 = _acc_vs(summaries["asam"], sam, 0.0)
        out["G4"] = {**g4, "criterion": "ASAM's test accuracy at least SAM's (the 95% interval of ASAM − SAM above 0)"}
    for arm in ("ssam-f", "ssam-d"):
        if arm in summaries:
            g5 = _acc_vs(summaries[arm], sam, 0.003)
            out[f"G5-{arm}"] = {**g5, "criterion": "test accuracy within 0.3 points of SAM's or better (the 95% "
                                                   "interval of the difference above −0.3 points)"}
    return out


def evaluate(dirs: Mapping[str, Path]) -> dict[str, Any]:
    """G1, G3, G4 and G5 from the arms' runs."""
    runs = arm_criteria.arm_series(arm_criteria.arms(dirs))
    summaries = {arm: arm_criteria.arm_summary(ss) for arm, ss in runs.items()}
    out: dict[str, Any] = {"arms": {a: s.to_dict() for a, s in summaries.items()}}
    if "sgd" not in summaries or "sam" not in summaries:
        return out
    matched = arm_criteria.at_matched_loss(runs, quantities=("lambda_max", "trace", "test_acc"))
    out["matched_loss"] = matched.to_dict()
    return {**out, **flatness_verdicts(summaries, matched)}


def detectable(scale: str) -> list[dict[str, Any]]:
    """G1, G3, G4 and G5's smallest detectable differences at the scale's seeds; the noise assumed from the
    committed cpu-scale runs (per-arm seed sd; the test set's binomial error of both arms, 1.55 points)."""
    n, src = len(SCALES[scale].seeds), "noise of the committed cpu runs, figures/sam-flatness-summary.json"
    return plan([
        Assumption("G1", "test accuracy, SAM − SGD", n, n, 0.0187, 0.0512, 0.01545, src),
        Assumption("G3", "λ_max at the end, SAM − SGD", n, n, 9.58, 17.9, 0.0, src),
        Assumption("G4", "test accuracy, ASAM − SAM", n, n, 0.0121, 0.0187, 0.01563, src),
        Assumption("G5", "test accuracy, SSAM-F − SAM", n, n, 0.0188, 0.0187, 0.0155, src),
        Assumption("G5", "test accuracy, SSAM-D − SAM", n, n, 0.0170, 0.0187, 0.0155, src),
    ])


_CAPTION = ("Lines: the mean over an arm's 3 seeds; shaded: the 95% Student-t interval of that mean over seeds "
            "(the seed part of the verdicts' Welch intervals, which add the estimators' errors to it). Test accuracy "
            "with 95% Wilson bars for the "
            "2 000 test images; train accuracy on the probe set. Top right, the matched-loss readout: each seed's "
            "value read at training-loss levels every run reaches (mean and 95% interval over seeds); G3 compares "
            "SGD's and SAM's λ_max at the lowest level. λ_max by Lanczos and tr(H) by Hutch++ on a fixed subset of "
            "the training images. Not the papers' setting: 2 000 CIFAR-10 images and a BatchNorm-free CNN "
            "(16-32-64 channels) for 1 500 steps, no augmentation, where Foret et al. train WideResNets on all "
            "50 000 images with augmentation.")


def g3_ratio_facts(plot: Mapping[str, Any]) -> str:
    """G3's ratio read from a figure's plotted numbers: λ_max(SGD)/λ_max(SAM) at the lowest common training loss
    with the interval the verdict uses (:func:`_ratio_verdict`)."""
    from sharpscope.plots.arms import derived_arms

    matched = derived_arms(plot)["matched_loss"]
    arms = matched["arms"]
    if not matched["levels"] or "sgd" not in arms or "sam" not in arms:
        return ""
    sgd, sam = (list(map(float, arms[a]["lambda_max"]["values"][:, -1])) for a in ("sgd", "sam"))
    verdict = _ratio_verdict(sgd, sam, 5.0)
    return f"G3 at that level: λ_max(SGD)/λ_max(SAM), {verdict.reason} (the claim needs ≥ 5): {verdict.label}."


def without_data(_: str) -> dict[str, str]:
    """Without the CIFAR-10 training file the study runs on MNIST-1D with a ReLU MLP."""
    return {CIFAR10_TRAIN: "MNIST-1D and a ReLU MLP used"}


STUDY = Study("sam-flatness", ("G1", "G3", "G4", "G5"), stages, evaluate, without_data=without_data, figures=(
    Figure("lambda-max", "arms-lambda", tuple(f"{arm}-s*" for arm in ARMS),
           "SGD, SAM, ASAM and Sparse SAM (Fisher and dynamic masks, 50%) on a BatchNorm-free CIFAR-10 CNN: λ_max "
           "(log axis; no stability edge is drawn: momentum SGD's (2+2β)/η is far above, ASAM and Sparse SAM have "
           "none, and SAM's over momentum is the toolkit's extension, not reached in the mini-batch runs of the "
           "sam-edge study). " + _CAPTION, facts=g3_ratio_facts),
    Figure("trace", "arms", tuple(f"{arm}-s*" for arm in ARMS),
           "The same arms: tr(H), test and train accuracy. " + _CAPTION),
), detectable=detectable)
