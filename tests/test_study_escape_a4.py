"""The escape-a4 study at smoke scale: SA at perturbation batches 1, B₁, B₀ from escape-a3's bad minimizers,
ρ and η′ unscaled and scaled, paired intervals over the minimizers."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sharpscope.errors import ConfigError
from sharpscope.experiments import statistics as st
from sharpscope.experiments import verdicts
from sharpscope.experiments.studies import run_study, study_stages
from sharpscope.experiments.studies.escape_a3 import SCALES, reading, sa_step_at
from sharpscope.experiments.studies.escape_a4 import BATCHES, LEFT_FACTOR, arm, form_verdict, left
from sharpscope.experiments.studies.framework import finished_summary
from sharpscope.io.readings import ModelReading
from sharpscope.optim.random_perturbation import batch_scaled
from sharpscope.track import RunDirectory
from tests.smoke_study import run_smoke_study

pytestmark = pytest.mark.usefixtures("single_thread")
SC = SCALES["smoke"]
ONE, MID, FULL = BATCHES["smoke"]


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    return run_smoke_study("escape-a4", tmp_path_factory)


def kwargs(out: Path, name: str) -> dict[str, Any]:
    return RunDirectory(out / name).read_config()["optimizer_kwargs"]


def test_the_shared_stages_are_escape_a3s_so_its_folder_is_reused(study) -> None:
    """pretrain, finetune and SA at the main batch are built as escape-a3 builds them: a finished escape-a3
    stage counts as finished here (and the other way round)."""
    out, _ = study
    a3 = {s.name: s for s in study_stages("escape-a3", "smoke")}
    for m in SC.minimizers:
        for name in (f"pretrain-m{m}", f"finetune-m{m}", f"sa-m{m}"):
            cfg = a3[name].build("smoke", out)
            cfg.recipe, cfg.scale = f"escape-a3/{name}", "smoke"
            if a3[name].init_from:
                cfg.init_from = str((out / a3[name].init_from).resolve())
            assert finished_summary(out / name, cfg) is not None


def test_the_arms_differ_from_sa_only_in_the_perturbation_batch_and_its_scaling(study) -> None:
    out, _ = study
    for m in SC.minimizers:
        base = kwargs(out, f"sa-m{m}")
        assert base["batch_size"] == FULL and base.get("batch_scaling", "none") == "none"
        for b in (ONE, MID):
            plain, scaled = kwargs(out, arm(b, "unscaled", m, FULL)), kwargs(out, arm(b, "scaled", m, FULL))
            assert plain == {**base, "batch_size": b}
            assert scaled == {**base, "batch_size": b, "batch_scaling": "rho+lr", "reference_batch": FULL}
            rho, lrp = batch_scaled(SC.rho, SC.lr_perturb, b, FULL, "rho+lr")
            assert rho == pytest.approx(SC.rho * math.sqrt(b / FULL), rel=1e-12)
            assert lrp == pytest.approx(SC.lr_perturb * math.sqrt(b / FULL), rel=1e-12)
            for name in (arm(b, "unscaled", m, FULL), arm(b, "scaled", m, FULL)):
                cfg = RunDirectory(out / name).read_config()
                assert cfg["seed"] == m and cfg["steps"] == SC.steps
                assert cfg["init_from"] == str((out / f"finetune-m{m}").resolve())
    assert arm(FULL, "scaled", 0, FULL) == arm(FULL, "unscaled", 0, FULL) == "sa-m0"


def test_each_comparison_is_the_paired_interval_of_the_end_readings(study) -> None:
    out, summary = study
    results = summary.results
    assert results["batches"] == [ONE, MID, FULL] and results["minimizers"] == list(SC.minimizers)
    for form in ("unscaled", "scaled"):
        for a, b in ((ONE, MID), (MID, FULL), (ONE, FULL)):
            cmp = results["comparisons"][form][f"{a}-{b}"]
            ra = [reading(out / arm(a, form, m, FULL), SC) for m in SC.minimizers]
            rb = [reading(out / arm(b, form, m, FULL), SC) for m in SC.minimizers]
            for q, scaled in (("trace_paired", False), ("trace_per_loss", True)):
                diffs = [np.asarray(x.trace_samples) / (x.train_loss if scaled else 1.0)
                         - np.asarray(y.trace_samples) / (y.train_loss if scaled else 1.0)
                         for x, y in zip(ra, rb, strict=True)]
                e = math.sqrt(np.mean([np.var(d, ddof=1) / d.size for d in diffs]))
                d = st.paired_difference([float(x.mean()) for x in diffs], estimator_se=e)
                assert cmp[q]["per_minimizer"] == pytest.approx([float(x.mean()) for x in diffs], rel=1e-9)
                assert cmp[q]["interval"] == pytest.approx([d.low, d.high], rel=1e-9)
                judged = (verdicts.judge_non_inferiority(d, margin=0.0, better="lower") if (a, b) == (MID, FULL)
                          else verdicts.judge_difference(d, better="lower"))
                assert cmp[q]["verdict"] == judged.label
            assert cmp["train_loss"] == pytest.approx([x.train_loss - y.train_loss for x, y in zip(ra, rb)])
    a4 = results["A4"]
    parts = {k: verdicts.Verdict(v["verdict"]) for k, v in (
        ("1", results["comparisons"]["unscaled"][f"{ONE}-{MID}"]["trace_paired"]),
        ("2", results["comparisons"]["unscaled"][f"{MID}-{FULL}"]["trace_paired"]))}
    assert verdicts.combine(parts).label == a4["parts"]["unscaled"]["tr(H)"]["label"]
    start = [reading(out / f"finetune-m{m}", SC) for m in SC.minimizers]
    ends = {b: [reading(out / arm(b, "unscaled", m, FULL), SC) for m in SC.minimizers] for b in (ONE, MID, FULL)}
    assert a4["verdict"] == form_verdict(verdicts.combine(parts), left(ends, start), ONE).label
    assert a4["verdict"] in verdicts.VERDICTS and a4["minimizers"] == len(SC.minimizers)


def test_at_equal_loss_each_end_meets_the_main_batch_run_where_its_loss_is_nearest(study) -> None:
    out, summary = study
    results = summary.results
    for form in ("unscaled", "scaled"):
        gone = results["A4"]["left_minimizer"][form]
        parts = {}
        for b in (ONE, MID):
            cmp = results["at_equal_loss"][form][f"{b}-{FULL}"]
            if str(b) in gone:
                assert "skipped" in cmp
                parts[b] = verdicts.Verdict(verdicts.NOT_TESTABLE)
                continue
            ends = [reading(out / arm(b, form, m, FULL), SC) for m in SC.minimizers]
            steps = [sa_step_at(out / f"sa-m{m}", e.train_loss) for m, e in zip(SC.minimizers, ends)]
            ref = [reading(out / f"sa-m{m}", SC, step) for m, step in zip(SC.minimizers, steps)]
            assert cmp["steps"] == steps
            diffs = [np.subtract(e.trace_samples, r.trace_samples) for e, r in zip(ends, ref)]
            e = math.sqrt(np.mean([np.var(d, ddof=1) / d.size for d in diffs]))
            d = st.paired_difference([float(x.mean()) for x in diffs], estimator_se=e)
            assert cmp["trace_paired"]["interval"] == pytest.approx([d.low, d.high], rel=1e-9)
            judged = (verdicts.judge_non_inferiority(d, margin=0.0, better="lower") if b == MID
                      else verdicts.judge_difference(d, better="lower"))
            assert cmp["trace_paired"]["verdict"] == judged.label
            parts[b] = judged
        assert results["A4"]["at_equal_loss"][form]["label"] == verdicts.combine(
            {str(b): v for b, v in parts.items()}).label


def test_the_figure_plots_the_end_readings(study) -> None:
    from sharpscope.experiments.studies.escape_a4 import figures

    _, summary = study
    [(stem, _, plotted, caption)] = figures(summary)
    assert stem == "batches" and "Scale 'smoke'" in caption
    for form in ("unscaled", "scaled"):
        rows = summary.results["readings"][form]
        for j in range(len(SC.minimizers)):
            assert plotted["trace"][form][j] == [rows[str(b)][j]["trace"] for b in (ONE, MID, FULL)]
            assert plotted["trace_per_loss"][form][j] == pytest.approx(
                [rows[str(b)][j]["trace_paired"] / rows[str(b)][j]["train_loss"] for b in (ONE, MID, FULL)])


def test_options_and_the_gpu_scale_are_refused_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="takes no options"):
        run_study("escape-a4", "smoke", tmp_path / "a", options={"steps": 3})
    with pytest.raises(ConfigError, match="sized for one CPU core"):
        run_study("escape-a4", "gpu", tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_the_report_tables_every_comparison_of_both_forms(study) -> None:
    from sharpscope.experiments.report import study_report

    _, summary = study
    text = study_report(summary)
    for form in ("unscaled", "scaled"):
        assert f"| B ({form}) |" in text and f"| B ({form}) at equal loss |" in text
    for a, b in ((ONE, MID), (MID, FULL), (ONE, FULL)):
        assert text.count(f"| vs B = {a} − B = {b} | trace_per_loss |") >= 2  # at the end, in both forms


def test_a_run_that_leaves_its_minimizer_decides_the_form() -> None:
    """A run ending above LEFT_FACTOR × the minimizer's loss is no minimizer: B = 1 among them → does not hold
    whatever tr(H) says; only another batch → not testable; none → the tr(H) ordering itself."""
    def at(loss: float) -> ModelReading:
        return ModelReading.from_dict({"train_loss": loss})

    start = [at(0.01), at(0.02)]
    just_in, just_out = LEFT_FACTOR * 0.01, LEFT_FACTOR * 0.01 * 1.001
    ends = {1: [at(just_out), at(0.01)], 64: [at(just_in), at(0.0)]}
    assert left(ends, start) == {1: [0]}
    holds = verdicts.Verdict(verdicts.HOLDS, "ordered")
    assert form_verdict(holds, left(ends, start), 1).label == verdicts.DOES_NOT_HOLD
    assert form_verdict(holds, {64: [1]}, 1).label == verdicts.NOT_TESTABLE
    assert form_verdict(holds, {}, 1) == holds
