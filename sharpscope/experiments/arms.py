"""Criteria over arms of seeded runs (the escape, label-noise and flatness studies): at the last step and at
matched training loss, over seeds.

A run directory named ``<arm>-s<seed>`` is one seed of an arm (a name without the suffix is an arm
of one run). For every arm the criteria report, per quantity, the per-seed values and their mean ± std
(:func:`~sharpscope.experiments.evidence.seed_stats`); test accuracies carry their binomial standard
error; tr(H) is also reported over the training loss ``L`` of the same measurement (near zero loss the
cross-entropy Hessian scales with the loss, so tr(H)/L separates flattening from fitting).

Matched loss: for a set of compared arms, :func:`~sharpscope.experiments.evidence.common_loss_levels`
picks training-loss levels every run reaches, and tr(H) and test accuracy are read at the first time
each run falls to each level (:func:`~sharpscope.experiments.evidence.interpolate_at_loss`).

A difference counts only beyond the seed spread (:func:`~sharpscope.experiments.evidence.compare_seeds`:
≥ 3 seeds per arm, ``|mean_a − mean_b| > std_a + std_b``); a test-accuracy difference also beyond its
binomial standard error (:func:`accuracy_comparison`). A claim whose effect a control reproduces is
"not demonstrated".
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sharpscope.experiments import criteria, evidence
from sharpscope.track import RunDirectory

_SEED = re.compile(r"^(?P<arm>.+)-s(?P<seed>\d+)$")


def arm_of(stage: str) -> str:
    """``"best-sa-s2"`` → ``"best-sa"``; a name without a seed suffix is its own arm."""
    m = _SEED.match(stage)
    return m.group("arm") if m else stage


def arms(dirs: Mapping[str, Path]) -> dict[str, list[Path]]:
    """Run directories grouped by arm, in the order first seen."""
    out: dict[str, list[Path]] = {}
    for name, path in dirs.items():
        out.setdefault(arm_of(name), []).append(path)
    return out


def series(path: Path) -> dict[str, Any]:
    """One run's measurements as columns, its status and its test-set size."""
    rec = criteria.measurements(path)
    summary = RunDirectory(path).read_summary() or {}
    test = ((summary.get("data") or {}).get("test") or {}).get("examples")
    lam1, lam5 = criteria.column(rec, "eigenvalues.0"), criteria.column(rec, "eigenvalues.4")
    return {"step": criteria.column(rec, "step"), "loss": criteria.column(rec, "train_loss"),
            "trace": criteria.column(rec, "trace.estimate"), "test_acc": criteria.column(rec, "test_acc"),
            "train_acc": criteria.column(rec, "train_acc"), "lambda_max": lam1,
            "lambda1_over_lambda5": [a / b if b > 0 else math.nan for a, b in zip(lam1, lam5)],
            "status": summary.get("status"), "test_examples": test}


QUANTITIES = ("trace", "lambda_max", "lambda1_over_lambda5", "test_acc", "train_acc", "loss")


def _last_finite(values: Sequence[float]) -> float:
    return next((v for v in reversed(values) if math.isfinite(v)), math.nan)


def run_numbers(path: Path) -> dict[str, Any]:
    """Start and end of one run: tr(H), λ_max, λ_1/λ_5, test and train accuracy, loss, tr(H)/L, and the
    minimum train accuracy."""
    s = series(path)
    out: dict[str, Any] = {"status": s["status"], "measurements": len(s["step"])}
    if not s["step"]:
        return out
    for key in QUANTITIES:
        out[key] = [s[key][0], _last_finite(s[key])]
    ratio = [t / loss if loss > 0 else math.nan for t, loss in zip(out["trace"], out["loss"])]
    out["trace_over_loss"] = ratio
    finite_train = [a for a in s["train_acc"] if math.isfinite(a)]
    out["min_train_acc"] = min(finite_train) if finite_train else math.nan
    out["test_examples"] = s["test_examples"]
    return out


def arm_summary(paths: Sequence[Path]) -> dict[str, Any]:
    """Per-seed end values of an arm and their mean ± std; the test accuracy's binomial standard error."""
    runs = [run_numbers(p) for p in paths]
    out: dict[str, Any] = {"seeds": len(runs), "status": [r.get("status") for r in runs]}
    for key in (*QUANTITIES, "trace_over_loss"):
        out[key] = evidence.seed_stats([r[key][1] if key in r else math.nan for r in runs])
        out[f"{key}_start"] = evidence.seed_stats([r[key][0] if key in r else math.nan for r in runs])
    out["min_train_acc"] = min((r.get("min_train_acc", math.nan) for r in runs), default=math.nan)
    n = next((r.get("test_examples") for r in runs if r.get("test_examples")), None)
    acc = out["test_acc"]["mean"]
    out["test_acc_stderr"] = evidence.binomial_stderr(acc, n) if n and math.isfinite(acc) else math.nan
    out["test_examples"] = n
    return out


def at_matched_loss(groups: Mapping[str, Sequence[Path]], num: int = 4,
                    quantities: Sequence[str] = ("trace", "test_acc", "lambda_max")) -> dict[str, Any]:
    """``quantities`` of each arm (per level: mean ± std over seeds) at training-loss levels every run of
    ``groups`` reaches."""
    runs = {arm: [series(p) for p in paths] for arm, paths in groups.items()}
    losses = [s["loss"] for ss in runs.values() for s in ss]
    levels = evidence.common_loss_levels(losses, num=num)
    out: dict[str, Any] = {"levels": levels, "arms": {}}
    for arm, ss in runs.items():
        out["arms"][arm] = {}
        for q in quantities:
            vals = [evidence.interpolate_at_loss(s["loss"], s[q], levels) for s in ss]
            out["arms"][arm][q] = [evidence.seed_stats([v[i] for v in vals]) for i in range(len(levels))]
    return out


def _values(stats: Mapping[str, Any]) -> list[float]:
    return list(stats.get("values", []))


def accuracy_comparison(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """``a``'s test accuracy above ``b``'s: beyond the seed spread *and* beyond the binomial standard error
    of the difference, √(SE_a² + SE_b²) (seeds share one test set, so its sampling error is not in the
    seed spread)."""
    out = evidence.compare_seeds(_values(a["test_acc"]), _values(b["test_acc"]), lower_is_better=False)
    se = math.hypot(a.get("test_acc_stderr", math.nan), b.get("test_acc_stderr", math.nan))
    beyond_se = bool(math.isfinite(se) and abs(out["difference"]) > se)
    return {**out, "binomial_stderr": se, "beyond_binomial_stderr": beyond_se, "holds": bool(out["holds"] and beyond_se)}


def versus(a: Mapping[str, Any], b: Mapping[str, Any], matched: Mapping[str, Any] | None = None,
           a_arm: str = "", b_arm: str = "") -> dict[str, Any]:
    """Arm ``a`` against ``b``: lower tr(H) and higher test accuracy (:func:`accuracy_comparison`) at the
    end, lower tr(H)/L, and lower tr(H) at the lowest common loss level (when ``matched`` holds both arms)."""
    out: dict[str, Any] = {"trace": evidence.compare_seeds(_values(a["trace"]), _values(b["trace"]), lower_is_better=True),
           "test_acc": accuracy_comparison(a, b),
           "trace_over_loss": evidence.compare_seeds(_values(a["trace_over_loss"]), _values(b["trace_over_loss"]),
                                                     lower_is_better=True)}
    if matched and matched.get("levels") and a_arm in matched["arms"] and b_arm in matched["arms"]:
        out["trace_at_lowest_common_loss"] = evidence.compare_seeds(
            _values(matched["arms"][a_arm]["trace"][-1]), _values(matched["arms"][b_arm]["trace"][-1]),
            lower_is_better=True)
    out["better"] = bool(out["trace"]["holds"] and out["test_acc"]["holds"])
    return out


def best_setting(out_dir: Path, names: Sequence[str]) -> dict[str, Any] | None:
    """Among the finished sweep runs ``names``, the one with the lowest tr(H) at the end (the claim's own
    quantity: the setting most favourable to it), preferring runs that kept ≥ 99% train accuracy
    throughout: ``{"name", "alg", "rho", "lr_perturb", "trace", "trace_over_loss", "kept_train_acc"}``
    (None if no run finished). The controls and the matched-loss comparison, not the selection, guard
    against a setting that lowers tr(H) only by fitting further."""
    candidates = []
    for name in names:
        path = out_dir / name
        if not (path / "summary.json").is_file():
            continue
        nums = run_numbers(path)
        score = nums.get("trace", [math.nan, math.nan])[1]
        if nums.get("status") != "completed" or not math.isfinite(score):
            continue
        kept = bool(nums.get("min_train_acc", 0) >= 0.99)
        candidates.append((not kept, score, name, kept, nums["trace_over_loss"][1]))
    if not candidates:
        return None
    _, score, name, kept, ratio = min(candidates)
    kwargs = RunDirectory(out_dir / name).read_config()["optimizer_kwargs"]
    return {"name": name, "alg": name[len("sweep-"):].split("-rho")[0], "rho": float(kwargs["rho"]),
            "lr_perturb": float(kwargs["lr_perturb"]), "trace": score, "trace_over_loss": ratio,
            "kept_train_acc": kept}


def _verdict(beats_main: bool, beats_controls: bool) -> str:
    if beats_main and beats_controls:
        return "holds"
    if beats_main:
        return "not demonstrated"
    return "does not hold at this scale"


def escape_results(dirs: Mapping[str, Path]) -> dict[str, Any]:
    """A1–A4 from the escape study's run directories (see the module docstring)."""
    groups = arms(dirs)
    summaries = {arm: arm_summary(paths) for arm, paths in groups.items()}
    out: dict[str, Any] = {"arms": summaries}
    if "random-init" in summaries and "finetune" in summaries:
        good, bad = summaries["random-init"], summaries["finetune"]
        gap = good["test_acc"]["mean"] - bad["test_acc"]["mean"]
        out["A1"] = {"random_init_test_acc": good["test_acc"], "bad_test_acc": bad["test_acc"]["mean"],
                     "bad_train_acc": bad["train_acc"]["mean"], "gap_points": 100 * gap,
                     "stderr_points": 100 * math.hypot(good["test_acc_stderr"], bad["test_acc_stderr"]),
                     "criterion": "gap ≥ 20 points", "verdict": "holds" if gap >= 0.2 else
                     ("partly" if gap > 0 else "does not hold at this scale")}
    if "sgd" in summaries:
        sgd = summaries["sgd"]
        delta = [a - b for a, b in zip(_values(sgd["test_acc"]), _values(sgd["test_acc_start"]))]
        stats = evidence.seed_stats(delta)
        out["A2"] = {"delta_test_acc_points": {k: 100 * v if isinstance(v, float) else v for k, v in stats.items()
                                               if k != "values"},
                     "trace_start_end": [sgd["trace_start"]["mean"], sgd["trace"]["mean"]],
                     "criterion": "|Δ test accuracy| < 2 points", "verdict": "holds" if abs(stats["mean"]) < 0.02
                     else "does not hold at this scale"}
    main = ("best-sa", "best-rs")
    if all(a in summaries for a in main):
        controls: list[str] = [a for a in ("best-sa-rho0", "sgd") if a in summaries]
        controls += [a for a in summaries if a.startswith("sgd-lr")]
        compared = {a: groups[a] for a in (*main, *controls)}
        matched = at_matched_loss(compared)
        vs_rs = versus(summaries["best-sa"], summaries["best-rs"], matched, "best-sa", "best-rs")
        vs_controls = {c: versus(summaries["best-sa"], summaries[c], matched, "best-sa", c) for c in controls}
        beats_controls = bool(controls) and all(v["better"] for v in vs_controls.values())
        out["A3"] = {"sa_vs_rs": vs_rs, "sa_vs_controls": vs_controls, "matched_loss": matched,
                     "criterion": "SA below RS in tr(H) and above it in test accuracy beyond the seed spread; "
                                  "and the same against every control",
                     "verdict": _verdict(vs_rs["better"], beats_controls)}
    batch_arms = sorted((a for a in summaries if re.fullmatch(r"sa-b\d+", a)), key=lambda a: int(a[4:]))
    if batch_arms:
        tr = {a: summaries[a]["trace"]["mean"] for a in batch_arms}
        twins = {a: versus(summaries[a], summaries[f"{a}-rho0"]) for a in batch_arms if f"{a}-rho0" in summaries}
        means = list(tr.values())
        ordered = all(x < y for x, y in zip(means, means[1:]))
        spread = [evidence.compare_seeds(_values(summaries[a]["trace"]), _values(summaries[b]["trace"]),
                                         lower_is_better=True) for a, b in zip(batch_arms, batch_arms[1:])]
        diverged = [a for a in batch_arms if "diverged" in summaries[a]["status"]]
        seeds = min(summaries[a]["seeds"] for a in batch_arms)
        out["A4"] = {"trace_by_batch": tr, "ordered": ordered, "ordering_beyond_spread": [s["holds"] for s in spread],
                     "vs_rho0_twin": twins, "diverged": diverged,
                     "criterion": "tr(H) ordered B = 1 < 64 < 128 beyond the seed spread, and B = 1 better than its "
                                  "ρ = 0 twin",
                     "seeds": seeds,
                     "verdict": "not demonstrated" if seeds < evidence.MIN_SEEDS else _verdict(
                         bool(spread) and all(s["holds"] for s in spread) and not diverged,
                         bool(twins) and twins.get(batch_arms[0], {}).get("better", False))}
    return out


def label_noise_results(dirs: Mapping[str, Path]) -> dict[str, Any]:
    """G6: Spearman ρ_s of tr(H) and test accuracy along each label-noise run (with a bootstrap interval),
    after step 0 (the stated rule: step 0 is the minimizer before any noise, so it is left out; the value
    with it is reported beside) and the comparison with noiseless SGD at the same step size."""
    groups = arms(dirs)
    out: dict[str, Any] = {"arms": {a: arm_summary(p) for a, p in groups.items()}}
    if "label-noise" not in groups:
        return out
    per_seed = []
    for path in groups["label-noise"]:
        s = series(path)
        after = evidence.spearman_with_ci(s["trace"][1:], s["test_acc"][1:])
        per_seed.append({"run": path.name, "after_step_0": after,
                         "with_step_0": evidence.spearman_with_ci(s["trace"], s["test_acc"])["rho"]})
    control = []
    for path in groups.get("noiseless", []):
        s = series(path)
        control.append(evidence.spearman_with_ci(s["trace"][1:], s["test_acc"][1:])["rho"])
    rhos = [p["after_step_0"]["rho"] for p in per_seed]
    correlated = bool(rhos) and all(r <= -0.7 and p["after_step_0"]["ci"][1] < 0 for r, p in zip(rhos, per_seed))
    vs = None
    if "noiseless" in groups:
        matched = at_matched_loss({a: groups[a] for a in ("label-noise", "noiseless")})
        vs = versus(out["arms"]["label-noise"], out["arms"]["noiseless"], matched, "label-noise", "noiseless")
    out["G6"] = {"spearman_per_seed": per_seed, "spearman_after_step_0": evidence.seed_stats(rhos),
                 "noiseless_spearman_after_step_0": control, "vs_noiseless": vs,
                 "criterion": "ρ_s ≤ −0.7 with its 95% interval below 0 in every seed, and tr(H) below the "
                              "noiseless control beyond the seed spread",
                 "verdict": _verdict(correlated, bool(vs and vs["trace"]["holds"]))}
    return out
