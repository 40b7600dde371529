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

A difference is judged by Welch's 95% interval of the difference of arm means
(:func:`~sharpscope.experiments.evidence.compare_seeds`, ≥ 3 seeds per arm) that also carries the noise the
seeds do not vary: the trace estimator's standard error (probes are shared across seeds, so it does not
average out) and, for test accuracy, the binomial error of the one shared test set
(:func:`accuracy_comparison`). Verdicts are those of :mod:`sharpscope.experiments.verdicts`; a claim whose
effect a control matches is not a pass (:func:`~sharpscope.experiments.verdicts.with_controls`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import pairwise
from pathlib import Path
from typing import Any

from sharpscope.experiments import criteria, evidence, statistics, verdicts
from sharpscope.experiments.verdicts import Verdict
from sharpscope.io.jsonsafe import as_number
from sharpscope.io.rundir import read_measurements, read_summary
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


QUANTITIES = ("trace", "trace_stderr", "lambda_max", "lambda1_over_lambda5", "test_acc", "train_acc", "loss")
SUMMARISED = (*QUANTITIES, "trace_over_loss", "trace_over_loss_stderr")  # an arm summary's per-seed quantities


def _over_loss(x: float, loss: float) -> float:
    return x / loss if loss > 0 else math.nan


@dataclass(frozen=True)
class RunSeries:
    """One run's measurements as columns of :data:`QUANTITIES` and ``step`` (NaN where a measurement lacks the
    quantity; ``lambda1_over_lambda5`` = λ_1/λ_5), its status and its test-set size."""

    step: list[float]
    loss: list[float]
    trace: list[float]
    trace_stderr: list[float]
    test_acc: list[float]
    train_acc: list[float]
    lambda_max: list[float]
    lambda1_over_lambda5: list[float]
    status: str | None = None
    test_examples: int | None = None

    def column(self, quantity: str) -> list[float]:
        """The column of ``quantity``, one of :data:`QUANTITIES`."""
        if quantity not in QUANTITIES:
            raise KeyError(f"no column {quantity!r}: one of {', '.join(QUANTITIES)}")
        return list(getattr(self, quantity))


@dataclass(frozen=True)
class RunPoint:
    """:data:`QUANTITIES` at one reading of a run (NaN where missing), and tr(H)/L and its stderr over L."""

    trace: float = math.nan
    trace_stderr: float = math.nan
    lambda_max: float = math.nan
    lambda1_over_lambda5: float = math.nan
    test_acc: float = math.nan
    train_acc: float = math.nan
    loss: float = math.nan

    @property
    def trace_over_loss(self) -> float:
        """tr(H)/L (NaN unless L > 0)."""
        return _over_loss(self.trace, self.loss)

    @property
    def trace_over_loss_stderr(self) -> float:
        """The trace estimator's standard error over L (NaN unless L > 0)."""
        return _over_loss(self.trace_stderr, self.loss)

    def value(self, quantity: str) -> float:
        """The value of ``quantity``, one of :data:`SUMMARISED`."""
        if quantity not in SUMMARISED:
            raise KeyError(f"no quantity {quantity!r}: one of {', '.join(SUMMARISED)}")
        return float(getattr(self, quantity))


@dataclass(frozen=True)
class RunNumbers:
    """Start and end of one run (``end``: each quantity's last finite value), its status, number of
    measurements, minimum train accuracy and test-set size (None for a run without measurements)."""

    status: str | None
    measurements: int = 0
    start: RunPoint = field(default_factory=RunPoint)
    end: RunPoint = field(default_factory=RunPoint)
    min_train_acc: float = math.nan
    test_examples: int | None = None


def series(path: Path) -> RunSeries:
    """One run's measurements as columns, its status and its test-set size."""
    rec = read_measurements(path)
    summary = read_summary(path)
    lam1, lam5 = criteria.column(rec, lambda m: m.lambda_max), criteria.column(rec, lambda m: m.eigenvalue(4))
    return RunSeries(step=criteria.column(rec, lambda m: m.step), loss=criteria.column(rec, lambda m: m.train_loss),
                     trace=criteria.column(rec, lambda m: m.trace_estimate),
                     trace_stderr=criteria.column(rec, lambda m: m.trace_stderr),
                     test_acc=criteria.column(rec, lambda m: m.test_acc),
                     train_acc=criteria.column(rec, lambda m: m.train_acc), lambda_max=lam1,
                     lambda1_over_lambda5=[a / b if b > 0 else math.nan for a, b in zip(lam1, lam5)],
                     status=None if summary is None else summary.status,
                     test_examples=None if summary is None else summary.test_examples)


def _last_finite(values: Sequence[float]) -> float:
    return next((v for v in reversed(values) if math.isfinite(v)), math.nan)


def arm_series(groups: Mapping[str, Sequence[Path]]) -> dict[str, list[RunSeries]]:
    """Each arm's runs read once (:func:`series`), in the order of their directories."""
    return {arm: [series(p) for p in paths] for arm, paths in groups.items()}


def run_numbers(s: RunSeries) -> RunNumbers:
    """Start and end of one run's series: tr(H), λ_max, λ_1/λ_5, test and train accuracy, loss, tr(H)/L, and the
    minimum train accuracy."""
    if not s.step:
        return RunNumbers(s.status)
    finite_train = [a for a in s.train_acc if math.isfinite(a)]
    return RunNumbers(s.status, len(s.step), start=RunPoint(**{q: s.column(q)[0] for q in QUANTITIES}),
                      end=RunPoint(**{q: _last_finite(s.column(q)) for q in QUANTITIES}),
                      min_train_acc=min(finite_train) if finite_train else math.nan, test_examples=s.test_examples)


@dataclass(frozen=True)
class ArmSummary:
    """An arm over its seeds (:func:`arm_summary`): the seed count, each run's status, per quantity of
    :data:`SUMMARISED` (those recorded) the :func:`evidence.seed_stats` of the runs' values at the end (``end``)
    and at their first measurement (``start``, where recorded), the lowest train accuracy of any run, the
    binomial standard error of the test accuracy and the test-set size. Stored as :meth:`to_dict`."""

    seeds: int
    status: list[str | None]
    end: dict[str, evidence.SeedStats]
    start: dict[str, evidence.SeedStats]
    min_train_acc: float = math.nan
    test_acc_stderr: float = math.nan
    test_examples: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """``{"seeds", "status", <quantity>, "<quantity>_start", …, "min_train_acc", "test_acc_stderr",
        "test_examples"}``."""
        out: dict[str, Any] = {"seeds": self.seeds, "status": self.status}
        for q, stats in self.end.items():
            out[q] = stats.to_dict()
            if q in self.start:
                out[f"{q}_start"] = self.start[q].to_dict()
        return {**out, "min_train_acc": self.min_train_acc, "test_acc_stderr": self.test_acc_stderr,
                "test_examples": self.test_examples}

    @classmethod
    def from_dict(cls, stored: Mapping[str, Any]) -> ArmSummary:
        """The summary stored by :meth:`to_dict` (non-numbers read as NaN)."""
        held, read = [q for q in SUMMARISED if q in stored], evidence.SeedStats.from_dict
        return cls(int(stored["seeds"]), list(stored["status"]), {q: read(stored[q]) for q in held},
                   {q: read(stored[f"{q}_start"]) for q in held if f"{q}_start" in stored},
                   as_number(stored.get("min_train_acc")), as_number(stored.get("test_acc_stderr")),
                   stored.get("test_examples"))


def arm_summary(seeds: Sequence[RunSeries]) -> ArmSummary:
    """Per-seed end values of an arm (its runs' series) and their mean ± std; the test accuracy's binomial
    standard error."""
    runs = [run_numbers(s) for s in seeds]
    end = {q: evidence.seed_stats([r.end.value(q) for r in runs]) for q in SUMMARISED}
    n = next((r.test_examples for r in runs if r.test_examples), None)
    acc = end["test_acc"].mean
    return ArmSummary(len(runs), [r.status for r in runs], end,
                      {q: evidence.seed_stats([r.start.value(q) for r in runs]) for q in SUMMARISED},
                      min((r.min_train_acc for r in runs), default=math.nan),
                      evidence.binomial_stderr(acc, n) if n and math.isfinite(acc) else math.nan, n)


@dataclass(frozen=True)
class MatchedLoss:
    """Readings at training-loss ``levels`` (descending) that every compared run reaches: ``arms[arm][quantity]``
    holds one :func:`evidence.seed_stats` over the arm's seeds per level; the last level is the lowest, the one
    the verdicts compare. Stored as :meth:`to_dict`."""

    levels: list[float]
    arms: dict[str, dict[str, list[evidence.SeedStats]]]

    def compares(self, *arms: str) -> bool:
        """Whether there is a level and each of ``arms`` was read at it."""
        return bool(self.levels) and all(a in self.arms for a in arms)

    def lowest(self, arm: str, quantity: str) -> evidence.SeedStats:
        """``quantity`` of ``arm`` at the lowest level (no seeds where it was not read)."""
        return (self.arms.get(arm, {}).get(quantity) or [evidence.seed_stats([])])[-1]

    def to_dict(self) -> dict[str, Any]:
        """``{"levels", "arms"}`` as stored in a study's results."""
        return {"levels": self.levels,
                "arms": {a: {q: [s.to_dict() for s in ss] for q, ss in qs.items()} for a, qs in self.arms.items()}}

    @classmethod
    def from_dict(cls, stored: Mapping[str, Any]) -> MatchedLoss:
        """The reading stored by :meth:`to_dict` (no levels and no arms when empty)."""
        return cls(list(stored.get("levels") or []), {a: {q: list(map(evidence.SeedStats.from_dict, ss))
                                                          for q, ss in qs.items()}
                                                      for a, qs in (stored.get("arms") or {}).items()})


def at_matched_loss(runs: Mapping[str, Sequence[RunSeries]], num: int = 4,
                    quantities: Sequence[str] = ("trace", "test_acc", "lambda_max")) -> MatchedLoss:
    """``quantities`` of each arm (per level: mean ± std over seeds) at training-loss levels every run of
    ``runs`` (each arm's series) reaches; with ``trace``, also the trace estimator's standard error read the same
    way."""
    levels = evidence.common_loss_levels([s.loss for ss in runs.values() for s in ss], num=num)
    wanted = list(quantities) + (["trace_stderr"] if "trace" in quantities else [])
    out = MatchedLoss(levels, {})
    for arm, ss in runs.items():
        out.arms[arm] = {}
        for q in wanted:
            vals = [evidence.interpolate_at_loss(s.loss, s.column(q), levels) for s in ss]
            out.arms[arm][q] = [evidence.seed_stats([v[i] for v in vals]) for i in range(len(levels))]
    return out


def estimator_se(stats: evidence.SeedStats | None) -> float:
    """One arm's estimator standard error from its per-seed stderrs (:func:`evidence.seed_stats` of them): their
    root mean square, 0 when none is recorded. Probes are shared across seeds, so this is the estimator error
    of the arm's mean too (it does not shrink with the seed count)."""
    values = [v for v in (stats.values if stats else []) if math.isfinite(v)]
    return math.sqrt(sum(v * v for v in values) / len(values)) if values else 0.0


def trace_comparison(a: Mapping[str, evidence.SeedStats], b: Mapping[str, evidence.SeedStats],
                     key: str = "trace") -> evidence.Comparison:
    """``a``'s ``key`` (``trace`` or ``trace_over_loss``) below ``b``'s: :func:`evidence.compare_seeds` with each
    arm's trace estimator standard error. ``a``, ``b``: :func:`evidence.seed_stats` by quantity (an
    :class:`ArmSummary`'s ``end``, or a matched-loss reading)."""
    return evidence.compare_seeds(a[key].values, b[key].values, lower_is_better=True,
                                  estimator_se_a=estimator_se(a.get(f"{key}_stderr")),
                                  estimator_se_b=estimator_se(b.get(f"{key}_stderr")))


def accuracy_comparison(a: ArmSummary, b: ArmSummary) -> evidence.Comparison:
    """``a``'s test accuracy above ``b``'s: Welch's interval over seeds with the binomial standard error of each
    arm's accuracy added (the seeds share one test set, so its sampling error is not in the seed spread). The
    two binomial errors are added as if independent: a paired test needs each arm's per-example predictions,
    which the runs do not store, and is tighter whenever the arms err on the same examples."""
    se_a, se_b = (x.test_acc_stderr if math.isfinite(x.test_acc_stderr) else 0.0 for x in (a, b))
    out = evidence.compare_seeds(a.end["test_acc"].values, b.end["test_acc"].values, lower_is_better=False,
                                 estimator_se_a=se_a, estimator_se_b=se_b)
    return replace(out, binomial_stderr=math.hypot(se_a, se_b))


@dataclass(frozen=True)
class Versus:
    """Arm ``a`` against ``b`` (:func:`versus`): tr(H), test accuracy and tr(H)/L at the end, tr(H) at the lowest
    common loss (None without one), and the verdict they combine to. Stored as :meth:`to_dict`."""

    trace: evidence.Comparison
    test_acc: evidence.Comparison
    trace_over_loss: evidence.Comparison
    at_lowest_common_loss: evidence.Comparison | None
    verdict: Verdict

    def to_dict(self) -> dict[str, Any]:
        """Each comparison's :meth:`~evidence.Comparison.to_dict` under its quantity (tr(H) at the lowest common
        loss as ``trace_at_lowest_common_loss``), the verdict, and ``better``: whether it holds."""
        out = {"trace": self.trace.to_dict(), "test_acc": self.test_acc.to_dict(),
               "trace_over_loss": self.trace_over_loss.to_dict()}
        if self.at_lowest_common_loss is not None:
            out["trace_at_lowest_common_loss"] = self.at_lowest_common_loss.to_dict()
        return {**out, **self.verdict.as_result(), "better": self.verdict.passes}


def versus(a: ArmSummary, b: ArmSummary, matched: MatchedLoss | None = None,
           a_arm: str = "", b_arm: str = "") -> Versus:
    """Arm ``a`` against ``b``: lower tr(H) and higher test accuracy (:func:`accuracy_comparison`) at the
    end, lower tr(H)/L, and lower tr(H) at the lowest common loss level (when ``matched`` holds both arms).
    The verdict: tr(H) and test accuracy at the end and tr(H) at the lowest common loss, combined
    (:func:`verdicts.combine`)."""
    trace, acc = trace_comparison(a.end, b.end), accuracy_comparison(a, b)
    low = None
    if matched is not None and matched.compares(a_arm, b_arm):
        ma, mb = ({q: matched.lowest(arm, q) for q in ("trace", "trace_stderr")} for arm in (a_arm, b_arm))
        low = trace_comparison(ma, mb)
    parts = {"tr(H) at the end": trace.verdict, "test accuracy": acc.verdict}
    if low is not None:
        parts["tr(H) at the lowest common loss"] = low.verdict
    return Versus(trace, acc, trace_comparison(a.end, b.end, "trace_over_loss"), low, verdicts.combine(parts))


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
        nums = run_numbers(series(path))
        score = nums.end.trace
        if nums.status != "completed" or not math.isfinite(score):
            continue
        kept = bool(nums.min_train_acc >= 0.99)
        candidates.append((not kept, score, name, kept, nums.end.trace_over_loss))
    if not candidates:
        return None
    _, score, name, kept, ratio = min(candidates)
    kwargs = RunDirectory(out_dir / name).read_config()["optimizer_kwargs"]
    return {"name": name, "alg": name[len("sweep-"):].split("-rho")[0], "rho": float(kwargs["rho"]),
            "lr_perturb": float(kwargs["lr_perturb"]), "trace": score, "trace_over_loss": ratio,
            "kept_train_acc": kept}


def _a1(good: ArmSummary, bad: ArmSummary) -> dict[str, Any]:
    """A1: the bad minimizer's test accuracy ≥ 20 points below the random-init fits'. The interval carries the
    random-init seeds' spread and both binomial errors; with one bad minimizer the spread between minimizers
    is not in it."""
    acc, bad_acc = good.end["test_acc"], bad.end["test_acc"].mean
    gap = acc.mean - bad_acc
    seed_se = acc.std / math.sqrt(acc.n) if acc.n >= 2 else math.nan
    d = statistics.compare_readings(acc.mean, bad_acc, se_a=math.hypot(seed_se, good.test_acc_stderr),
                                    se_b=bad.test_acc_stderr) if math.isfinite(seed_se) and math.isfinite(gap) else None
    out: dict[str, Any] = {"random_init_test_acc": acc.to_dict(), "bad_test_acc": bad_acc,
                           "bad_train_acc": bad.end["train_acc"].mean, "gap_points": 100 * gap,
                           "stderr_points": 100 * d.se if d else math.nan,
                           "interval_points": [100 * d.low, 100 * d.high] if d else [math.nan, math.nan],
                           "bad_minimizers": bad.seeds, "criterion": "gap ≥ 20 points"}
    if d is None or acc.n < verdicts.MIN_SEEDS:
        v = Verdict(verdicts.INCONCLUSIVE, f"fewer than {verdicts.MIN_SEEDS} random-init seeds")
    else:
        text = f"gap {100 * gap:.3g} points, 95% interval [{100 * d.low:.3g}, {100 * d.high:.3g}]"
        if bad.seeds < verdicts.MIN_SEEDS:
            text += f" (from {bad.seeds} bad minimizer(s): the spread between minimizers is not in it)"
        label = (verdicts.HOLDS if d.low > 0.2 else verdicts.PARTLY if d.low > 0 and d.high < 0.2 else
                 verdicts.DOES_NOT_HOLD if d.high <= 0 else verdicts.INCONCLUSIVE)
        v = Verdict(label, text + ("; worse, but by less than 20 points" if label == verdicts.PARTLY else ""))
    return {**out, "verdict": v.label, "reason": v.reason}


def _a2(sgd: ArmSummary) -> dict[str, Any]:
    """A2: SGD at η does not escape: the change of test accuracy from the minimizer to the end within ±2 points
    (an equivalence test: the whole interval inside ±2 points). Start and end are read on the same test set;
    without per-example predictions their binomial errors are added as if independent."""
    start, end = sgd.start["test_acc"], sgd.end["test_acc"]
    n = sgd.test_examples
    se = [evidence.binomial_stderr(x.mean, n) if n and math.isfinite(x.mean) else 0.0 for x in (end, start)]
    d = statistics.welch_difference(end.values, start.values, estimator_se_a=se[0], estimator_se_b=se[1])
    v = verdicts.judge_equivalence(d, margin=0.02, what="end − start") if d.n_a >= verdicts.MIN_SEEDS else \
        Verdict(verdicts.INCONCLUSIVE, f"fewer than {verdicts.MIN_SEEDS} seeds")
    delta = evidence.seed_stats([a - b for a, b in zip(end.values, start.values)])
    return {"delta_test_acc_points": {"mean": 100 * delta.mean, "std": 100 * delta.std, "n": delta.n},
            "interval_points": [100 * d.low, 100 * d.high],
            "trace_start_end": [sgd.start["trace"].mean, sgd.end["trace"].mean],
            "criterion": "|Δ test accuracy| < 2 points (the 95% interval inside ±2 points)",
            "verdict": v.label, "reason": v.reason}


def escape_verdicts(summaries: Mapping[str, ArmSummary], matched: MatchedLoss | None = None,
                    lr_perturb: Mapping[str, float] | None = None) -> dict[str, Any]:
    """A1–A4 from arm summaries (:func:`arm_summary`), A3's matched-loss reading (:func:`at_matched_loss` over
    its arms) and the perturbation step sizes η′ of ``best-sa`` and ``best-rs`` (when known: RS and SA at
    different η′ cannot be compared)."""
    out: dict[str, Any] = {}
    if "random-init" in summaries and "finetune" in summaries:
        out["A1"] = _a1(summaries["random-init"], summaries["finetune"])
    if "sgd" in summaries:
        out["A2"] = _a2(summaries["sgd"])
    main = ("best-sa", "best-rs")
    if all(a in summaries for a in main):
        controls: list[str] = [a for a in ("best-sa-rho0", "sgd") if a in summaries]
        controls += [a for a in summaries if a.startswith("sgd-lr")]
        vs_rs = versus(summaries["best-sa"], summaries["best-rs"], matched, "best-sa", "best-rs")
        vs_controls = {c: versus(summaries["best-sa"], summaries[c], matched, "best-sa", c) for c in controls}
        verdict = verdicts.with_controls(vs_rs.verdict, {c: v.verdict for c, v in vs_controls.items()})
        eta = dict(lr_perturb or {})
        if "best-sa" in eta and "best-rs" in eta and eta["best-sa"] != eta["best-rs"]:
            verdict = Verdict(verdicts.NOT_TESTABLE, f"SA ran at η′ = {eta['best-sa']:g} and RS at η′ = "
                              f"{eta['best-rs']:g}: the comparison confounds the algorithm with the step size "
                              f"({verdict.text()})")
        out["A3"] = {"sa_vs_rs": vs_rs.to_dict(), "sa_vs_controls": {c: v.to_dict() for c, v in vs_controls.items()},
                     "matched_loss": {} if matched is None else matched.to_dict(), "lr_perturb": eta,
                     "criterion": "SA below RS in tr(H) and above it in test accuracy (95% intervals of the "
                                  "difference, with the estimator and test-set errors), and the same against every "
                                  "control",
                     **verdict.as_result()}
    batch_arms = sorted((a for a in summaries if re.fullmatch(r"sa-b\d+", a)), key=lambda a: int(a[4:]))
    if batch_arms:
        tr = {a: summaries[a].end["trace"].mean for a in batch_arms}
        twins = {a: versus(summaries[a], summaries[f"{a}-rho0"]) for a in batch_arms if f"{a}-rho0" in summaries}
        ordering = {f"{a} < {b}": trace_comparison(summaries[a].end, summaries[b].end) for a, b in pairwise(batch_arms)}
        diverged = [a for a in batch_arms if "diverged" in summaries[a].status]
        seeds = min(summaries[a].seeds for a in batch_arms)
        main_v = verdicts.combine({k: v.verdict for k, v in ordering.items()})
        if diverged:
            main_v = Verdict(verdicts.DOES_NOT_HOLD, f"diverged: {', '.join(diverged)}")
        twin = twins.get(batch_arms[0])
        verdict = verdicts.with_controls(main_v, {f"{batch_arms[0]} vs its ρ = 0 twin": twin.verdict}
                                         if twin else {})
        out["A4"] = {"trace_by_batch": tr, "ordering": {k: v.to_dict() for k, v in ordering.items()},
                     "vs_rho0_twin": {a: v.to_dict() for a, v in twins.items()}, "diverged": diverged,
                     "criterion": "tr(H) ordered B = 1 < 64 < 128 (95% intervals), and B = 1 below its ρ = 0 twin",
                     "seeds": seeds, **verdict.as_result()}
    return out


def escape_results(dirs: Mapping[str, Path]) -> dict[str, Any]:
    """A1–A4 from the escape study's run directories (:func:`escape_verdicts`)."""
    groups = arms(dirs)
    runs = arm_series(groups)
    summaries = {arm: arm_summary(ss) for arm, ss in runs.items()}
    matched = None
    eta: dict[str, float] = {}
    if "best-sa" in groups and "best-rs" in groups:
        compared = [a for a in summaries if a in ("best-sa", "best-rs", "best-sa-rho0", "sgd") or a.startswith("sgd-lr")]
        matched = at_matched_loss({a: runs[a] for a in compared})
        for arm in ("best-sa", "best-rs"):
            kwargs = RunDirectory(groups[arm][0]).read_config().get("optimizer_kwargs") or {}
            if isinstance(kwargs.get("lr_perturb"), (int, float)):
                eta[arm] = float(kwargs["lr_perturb"])
    return {"arms": {a: s.to_dict() for a, s in summaries.items()}, **escape_verdicts(summaries, matched, eta)}


def spearman_verdict(per_seed: Sequence[Mapping[str, Any]], threshold: float = -0.7) -> Verdict:
    """G6's correlation part from each seed's Spearman ``rho`` and bootstrap ``ci``: holds when every seed has
    ``rho ≤ threshold`` with its interval below 0; does not hold when some seed's interval lies above 0;
    inconclusive otherwise (or with fewer than three seeds)."""
    rhos = [p["rho"] for p in per_seed]
    text = "ρ_s " + ", ".join(f"{r:.2g} [{p['ci'][0]:.2g}, {p['ci'][1]:.2g}]" for r, p in zip(rhos, per_seed))
    if len(per_seed) < verdicts.MIN_SEEDS:
        return Verdict(verdicts.INCONCLUSIVE, f"fewer than {verdicts.MIN_SEEDS} seeds ({text})")
    if all(r <= threshold and p["ci"][1] < 0 for r, p in zip(rhos, per_seed)):
        return Verdict(verdicts.HOLDS, text)
    if any(p["ci"][0] > 0 for p in per_seed):
        return Verdict(verdicts.DOES_NOT_HOLD, f"{text}: a positive correlation")
    return Verdict(verdicts.INCONCLUSIVE, f"{text}: an interval reaches past 0 or ρ_s above {threshold:g}")


def label_noise_verdict(per_seed: Sequence[Mapping[str, Any]], vs: Versus | None,
                        common_loss_is_start: bool = False) -> Verdict:
    """G6: the correlation part (:func:`spearman_verdict`) and tr(H) below the noiseless control at equal
    training loss (the cross-entropy Hessian grows with the loss, which label noise holds up). When the only
    loss level both arms reach is the shared starting point, the control part cannot be judged."""
    parts = {"correlation": spearman_verdict([p["after_step_0"] for p in per_seed])}
    key = "tr(H) below the noiseless control at equal loss"
    if vs is None:
        parts[key] = Verdict(verdicts.NOT_RUN, "no noiseless control")
    elif common_loss_is_start or vs.at_lowest_common_loss is None:
        parts[key] = Verdict(verdicts.NOT_TESTABLE, "the arms share no training loss after the start (label noise "
                             f"raises it); at the end: {vs.trace.verdict.text()}")
    else:
        parts[key] = vs.at_lowest_common_loss.verdict
    return verdicts.combine(parts)


def label_noise_results(dirs: Mapping[str, Path]) -> dict[str, Any]:
    """G6: Spearman ρ_s of tr(H) and test accuracy along each label-noise run (with a bootstrap interval),
    after step 0 (the stated rule: step 0 is the minimizer before any noise, so it is left out; the value
    with it is reported beside) and the comparison with noiseless SGD at the same step size."""
    groups = arms(dirs)
    runs = arm_series(groups)
    summaries = {a: arm_summary(ss) for a, ss in runs.items()}
    out: dict[str, Any] = {"arms": {a: s.to_dict() for a, s in summaries.items()}}
    if "label-noise" not in runs:
        return out
    per_seed = []
    for path, s in zip(groups["label-noise"], runs["label-noise"], strict=True):
        after = evidence.spearman_with_ci(s.trace[1:], s.test_acc[1:])
        per_seed.append({"run": path.name, "after_step_0": after,
                         "with_step_0": evidence.spearman_with_ci(s.trace, s.test_acc)["rho"]})
    control = [evidence.spearman_with_ci(s.trace[1:], s.test_acc[1:])["rho"] for s in runs.get("noiseless", [])]
    rhos = [p["after_step_0"]["rho"] for p in per_seed]
    vs, at_start = None, False
    if "noiseless" in runs:
        compared = {a: runs[a] for a in ("label-noise", "noiseless")}
        matched = at_matched_loss(compared)
        vs = versus(summaries["label-noise"], summaries["noiseless"], matched, "label-noise", "noiseless")
        starts = [s.loss[0] for ss in compared.values() for s in ss if s.loss]
        at_start = bool(matched.levels) and bool(starts) and matched.levels[-1] >= min(starts)
    verdict = label_noise_verdict(per_seed, vs, at_start)
    out["G6"] = {"spearman_per_seed": per_seed, "spearman_after_step_0": evidence.seed_stats(rhos).to_dict(),
                 "noiseless_spearman_after_step_0": control, "vs_noiseless": None if vs is None else vs.to_dict(),
                 "criterion": "ρ_s ≤ −0.7 with its 95% interval below 0 in every seed, and tr(H) below the "
                              "noiseless control (95% interval of the difference)",
                 **verdict.as_result()}
    return out
