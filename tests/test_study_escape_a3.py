"""The escape-a3 study at smoke scale: arms at one ρ and η′, loss-matched stopping, fixed-probe readings,
intervals over the bad minimizers."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sharpscope.errors import ConfigError
from sharpscope.experiments import statistics as st
from sharpscope.experiments.studies import run_study
from sharpscope.experiments.studies.escape_a3 import SCALES, final_loss, paired_mde, reading, sa_step_at
from sharpscope.experiments.verdicts import VERDICTS
from sharpscope.track import RunDirectory
from tests.smoke_study import run_smoke_study

pytestmark = pytest.mark.usefixtures("single_thread")
SC = SCALES["smoke"]


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    return run_smoke_study("escape-a3", tmp_path_factory)


def config(out: Path, name: str) -> dict[str, Any]:
    return RunDirectory(out / name).read_config()


def test_rs_sa_and_the_twin_share_rho_and_eta_prime_and_every_arm_stops_at_sa_final_loss(study) -> None:
    out, summary = study
    for m in SC.minimizers:
        sa, rs, twin = (config(out, f"{a}-m{m}") for a in ("sa", "rs", "twin"))
        assert (sa["optimizer"], rs["optimizer"], twin["optimizer"]) == ("sa", "rs", "sa")
        for key in ("lr", "lr_perturb"):
            assert sa["optimizer_kwargs"][key] == rs["optimizer_kwargs"][key] == twin["optimizer_kwargs"][key]
        assert sa["optimizer_kwargs"]["rho"] == rs["optimizer_kwargs"]["rho"] == SC.rho and \
            twin["optimizer_kwargs"]["rho"] == 0.0
        assert config(out, f"sgd-lrp-m{m}")["optimizer_kwargs"]["lr"] == SC.lr_perturb
        goal = final_loss(out / f"sa-m{m}")
        for arm in ("rs", "twin", "sgd-lrp", "sgd"):
            cfg, run = config(out, f"{arm}-m{m}"), summary.stages[f"{arm}-m{m}"]
            assert cfg["stop_at_train_loss"] == goal and cfg["probes"] == "fixed" and cfg["probe_seed"] == 0
            assert cfg["seed"] == m == config(out, f"pretrain-m{m}")["seed"]  # one batch order per minimizer
            if run.status == "reached_train_loss":
                assert final_loss(out / f"{arm}-m{m}") <= goal
            else:
                assert run.status == "completed" and run.step == SC.max_steps


def test_readings_use_the_same_probes_in_every_run(study) -> None:
    """SA's kept checkpoint of step 0 holds the minimizer's weights: read in another run directory with the
    fixed probes it gives the minimizer's reading to the last bit; a later step gives other numbers."""
    out, _ = study
    start, minimizer = reading(out / "sa-m0", SC, 0), reading(out / "finetune-m0", SC)
    for key in ("trace", "trace_stderr", "trace_samples", "jacobian_trace", "train_loss", "test_correct",
                "lambda_max"):
        assert getattr(start, key) == getattr(minimizer, key)
    end = reading(out / "sa-m0", SC)
    assert end.trace != start.trace and end.trace_samples != start.trace_samples
    assert end.hvps == start.hvps == SC.trace_matvecs + SC.lanczos_iter + SC.paired_probes
    assert end.trace_paired == pytest.approx(float(np.mean(end.trace_samples)), rel=1e-12)
    more = reading(out / "sa-m0", replace(SC, paired_probes=SC.paired_probes + 2))  # the cache is for other sizes
    assert len(more.trace_samples or []) == SC.paired_probes + 2
    assert reading(out / "sa-m0", SC).trace_samples == end.trace_samples  # read again, to the same numbers


def test_each_comparison_is_the_paired_interval_of_the_readings_at_equal_loss(study) -> None:
    out, summary = study
    results = summary.results
    planned = [e["mde"] for e in (summary.detectable or [])]  # before the run, per sd of the per-minimizer differences
    assert planned == pytest.approx([paired_mde(len(SC.minimizers))] * 2)
    for cmp in results["comparisons"].values():
        pairs = cmp["pairs"]
        assert len(pairs) == len(SC.minimizers)
        for m, pair in enumerate(pairs):
            if pair["status"] != "reached_train_loss":  # SA read where its loss is nearest the arm's
                assert pair["sa"]["step"] == sa_step_at(out / f"sa-m{m}", pair["arm"]["train_loss"])
            else:
                assert pair["sa"]["step"] == summary.stages[f"sa-m{m}"].step
        trace = [p["sa"]["trace"] - p["arm"]["trace"] for p in pairs]
        acc = [p["sa"]["test_acc"] - p["arm"]["test_acc"] for p in pairs]  # paired: (n10 − n01)/n
        assert cmp["trace"]["per_minimizer"] == pytest.approx(trace, abs=1e-9)
        assert cmp["test_acc"]["per_minimizer"] == pytest.approx(acc, abs=1e-12)
        e = math.sqrt(np.mean([p["sa"]["trace_stderr"] ** 2 + p["arm"]["trace_stderr"] ** 2 for p in pairs]))
        d = st.paired_difference(trace, estimator_se=e)
        assert cmp["trace"]["interval"] == pytest.approx([d.low, d.high], rel=1e-9)
        full = [[reading(out / p[side]["run"], SC, p[side]["step"]) for side in ("sa", "arm")] for p in pairs]
        diffs = [np.subtract(sa.trace_samples, other.trace_samples) for sa, other in full]
        e = math.sqrt(np.mean([np.var(x, ddof=1) / x.size for x in diffs]))
        d = st.paired_difference([float(x.mean()) for x in diffs], estimator_se=e)
        assert cmp["trace_paired"]["interval"] == pytest.approx([d.low, d.high], rel=1e-9)
        assert cmp["trace"]["verdict"] in VERDICTS and cmp["test_acc"]["verdict"] in VERDICTS
    assert results["A3"]["verdict"] in VERDICTS and results["A3"]["minimizers"] == len(SC.minimizers)


def test_the_figure_plots_the_comparisons(study) -> None:
    from sharpscope.experiments.studies.escape_a3 import figures

    _, summary = study
    [(stem, _, plotted, caption)] = figures(summary)
    assert stem == "matched" and "Scale 'smoke'" in caption
    for arm, cmp in summary.results["comparisons"].items():
        assert plotted["differences"]["trace"][arm]["difference"] == pytest.approx(cmp["trace_paired"]["difference"])
        assert len(plotted["readings"]["test_acc"][arm]) == 2 * len(SC.minimizers)


def test_options_and_the_gpu_scale_are_refused_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="takes no options"):
        run_study("escape-a3", "smoke", tmp_path / "a", options={"copies": 3})
    with pytest.raises(ConfigError, match="sized for one CPU core"):
        run_study("escape-a3", "gpu", tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
