"""The escape and label-noise criteria on synthetic run directories: arms over seeds, controls, matched loss."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from sharpscope.experiments import arms as ec
from sharpscope.io import jsonsafe
from sharpscope.io.studysummary import StudySummary


def _run(root: Path, name: str, traces: list[float], accs: list[float], losses: list[float] | None = None,
         status: str = "completed", kwargs: dict | None = None) -> Path:
    """A run directory with measurements at steps 0, 10, ... of tr(H), test accuracy, train loss."""
    path = root / name
    path.mkdir(parents=True)
    losses = losses or [0.01 * 0.8**i for i in range(len(traces))]
    with (path / "metrics.jsonl").open("w") as f:
        for i, (t, a, loss) in enumerate(zip(traces, accs, losses)):
            f.write(json.dumps({"kind": "measurement", "step": 10 * i, "trace": {"estimate": t}, "test_acc": a,
                                "train_acc": 1.0, "train_loss": loss}) + "\n")
    (path / "summary.json").write_text(json.dumps({"status": status, "data": {"test": {"examples": 2000}}}))
    (path / "config.json").write_text(json.dumps({"optimizer_kwargs": kwargs or {"lr": 0.001}}))
    return path


def _arm(root: Path, arm: str, end_traces: list[float], end_accs: list[float], **kw) -> dict[str, Path]:
    return {f"{arm}-s{i}": _run(root, f"{arm}-s{i}", [20.0, t], [0.3, a], **kw)
            for i, (t, a) in enumerate(zip(end_traces, end_accs))}


def test_arm_of_and_grouping(tmp_path: Path) -> None:
    assert ec.arm_of("best-sa-rho0-s12") == "best-sa-rho0" and ec.arm_of("finetune") == "finetune"
    dirs = {**_arm(tmp_path, "sgd", [5, 6, 7], [0.3, 0.3, 0.3])}
    assert list(ec.arms(dirs)) == ["sgd"] and len(ec.arms(dirs)["sgd"]) == 3


def test_a3_holds_only_with_intervals_beyond_zero_against_rs_and_every_control(tmp_path: Path) -> None:
    """SA clearly below RS and every control: holds. The same SA with a control that matches it: a pass that a
    control matches is no pass (inconclusive here, with the MDE). SA inside RS's noise: inconclusive; SA clearly
    worse than RS: does not hold."""
    sa = _arm(tmp_path / "a", "best-sa", [5.0, 5.2, 4.8], [0.50, 0.51, 0.49])
    rs = _arm(tmp_path / "a", "best-rs", [10.0, 10.5, 9.5], [0.40, 0.41, 0.39])
    twin = _arm(tmp_path / "a", "best-sa-rho0", [11.0, 11.5, 10.5], [0.38, 0.39, 0.37])
    sgd = _arm(tmp_path / "a", "sgd", [12.0, 12.5, 11.5], [0.30, 0.31, 0.29])
    res = ec.escape_results({**sa, **rs, **twin, **sgd})["A3"]
    assert res["verdict"] == "holds" and res["sa_vs_rs"]["better"]
    assert res["matched_loss"]["levels"]  # every run reaches the same losses here
    trace = res["sa_vs_rs"]["trace"]
    assert trace["difference"] == pytest.approx(-5.0) and trace["interval"][1] < 0

    close = _arm(tmp_path / "b", "best-sa-rho0", [5.1, 5.6, 4.5], [0.50, 0.52, 0.48])
    sa_b = _arm(tmp_path / "b", "best-sa", [5.0, 5.2, 4.8], [0.50, 0.51, 0.49])
    rs_b = _arm(tmp_path / "b", "best-rs", [10.0, 10.5, 9.5], [0.40, 0.41, 0.39])
    res = ec.escape_results({**sa_b, **rs_b, **close})["A3"]
    assert res["verdict"] == "inconclusive" and "not every control" in res["reason"]
    ctl = res["sa_vs_controls"]["best-sa-rho0"]["trace"]
    assert ctl["interval"][0] < 0 < ctl["interval"][1] and math.isfinite(ctl["mde"]) and ctl["mde"] > 0

    rs_c = _arm(tmp_path / "c", "best-rs", [5.5, 4.0, 6.0], [0.50, 0.52, 0.48])
    sa_c = _arm(tmp_path / "c", "best-sa", [5.0, 5.2, 4.8], [0.50, 0.51, 0.49])
    assert ec.escape_results({**sa_c, **rs_c})["A3"]["verdict"] == "inconclusive"

    rs_d = _arm(tmp_path / "d", "best-rs", [1.0, 1.1, 0.9], [0.50, 0.51, 0.49])
    sa_d = _arm(tmp_path / "d", "best-sa", [5.0, 5.2, 4.8], [0.50, 0.51, 0.49])
    assert ec.escape_results({**sa_d, **rs_d})["A3"]["sa_vs_rs"]["trace"]["verdict"] == "does not hold"


def test_a3_with_rs_and_sa_at_different_step_sizes_is_not_testable(tmp_path: Path) -> None:
    sa = _arm(tmp_path, "best-sa", [5.0, 5.2, 4.8], [0.50, 0.51, 0.49], kwargs={"lr_perturb": 0.01})
    rs = _arm(tmp_path, "best-rs", [10.0, 10.5, 9.5], [0.40, 0.41, 0.39], kwargs={"lr_perturb": 0.001})
    res = ec.escape_results({**sa, **rs})["A3"]
    assert res["verdict"] == "not testable at this scale" and "η′ = 0.01" in res["reason"]
    assert res["sa_vs_rs"]["better"]  # the comparison is still reported


def test_the_trace_estimator_error_widens_the_interval(tmp_path: Path) -> None:
    """The same per-seed traces, once without and once with a recorded Hutch++ stderr of 3 per reading: the
    stderr (shared probes: not divided by the seed count) turns a clear difference into an open one."""
    def arm(root: Path, name: str, ends: list[float], stderr: float | None) -> dict[str, Path]:
        out = {}
        for i, t in enumerate(ends):
            path = _run(root, f"{name}-s{i}", [20.0, t], [0.3, 0.3])
            if stderr is not None:
                rows = [json.loads(x) for x in (path / "metrics.jsonl").read_text().splitlines()]
                for r in rows:
                    r["trace"]["stderr"] = stderr
                (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            out[f"{name}-s{i}"] = path
        return out

    for stderr, verdict in ((None, "holds"), (3.0, "inconclusive")):
        root = tmp_path / str(stderr)
        groups = ec.arms({**arm(root, "x", [5.0, 5.2, 4.8], stderr), **arm(root, "y", [10.0, 10.5, 9.5], stderr)})
        runs = ec.arm_series(groups)
        a, b = (ec.arm_summary(runs[k]) for k in ("x", "y"))
        cmp = ec.trace_comparison(a.end, b.end)
        assert cmp.verdict.label == verdict
        assert cmp.estimator_se == pytest.approx(0.0 if stderr is None else math.hypot(3.0, 3.0))


def test_two_seeds_never_pass(tmp_path: Path) -> None:
    sa = _arm(tmp_path, "best-sa", [1.0, 1.1], [0.9, 0.91])
    rs = _arm(tmp_path, "best-rs", [10.0, 10.1], [0.1, 0.11])
    res = ec.escape_results({**sa, **rs})["A3"]
    assert res["verdict"] == "inconclusive" and "fewer than 3 seeds" in res["sa_vs_rs"]["trace"]["reason"]


def test_matched_loss_reads_each_arm_at_equal_training_loss(tmp_path: Path) -> None:
    """Two arms whose traces are the same function of the loss (linear in log L, which the interpolation
    reproduces exactly) but who reach the losses at different steps: at matched step they differ, at
    matched loss they agree."""
    curve = lambda loss: 50 - 10 * math.log(loss)  # noqa: E731
    fast = {f"fast-s{i}": _run(tmp_path, f"fast-s{i}", [curve(0.1 ** (j / 2)) for j in range(5)], [0.3] * 5,
                               losses=[0.1 ** (j / 2) for j in range(5)]) for i in range(3)}
    slow = {f"slow-s{i}": _run(tmp_path, f"slow-s{i}", [curve(0.1 ** (j / 4)) for j in range(5)], [0.3] * 5,
                               losses=[0.1 ** (j / 4) for j in range(5)]) for i in range(3)}
    runs = ec.arm_series(ec.arms({**fast, **slow}))
    matched = ec.at_matched_loss(runs)
    assert matched.levels and matched.compares("fast", "slow") and not matched.compares("fast", "other")
    for i, level in enumerate(matched.levels):
        for arm in ("fast", "slow"):
            assert matched.arms[arm]["trace"][i].mean == pytest.approx(curve(level), rel=1e-9)
        assert matched.lowest("fast", "trace") is matched.arms["fast"]["trace"][-1]
    stored = jsonsafe.dumps(matched.to_dict())  # NaN stderrs (none recorded): compared as stored
    assert jsonsafe.dumps(ec.MatchedLoss.from_dict(jsonsafe.loads(stored)).to_dict()) == stored
    ends = {a: ec.arm_summary(ss).end["trace"].mean for a, ss in runs.items()}
    assert ends["fast"] > ends["slow"] + 10


def test_best_setting_prefers_runs_that_kept_their_accuracy(tmp_path: Path) -> None:
    _run(tmp_path, "sweep-sa-ind-rho0.1-lrp10", [20.0, 1.0], [0.3, 0.3], kwargs={"rho": 0.1, "lr_perturb": 0.01})
    _run(tmp_path, "sweep-sa-same-rho0.05-lrp1", [20.0, 3.0], [0.3, 0.3], kwargs={"rho": 0.05, "lr_perturb": 0.001})
    _run(tmp_path, "sweep-rs-rho0.5-lrp1", [20.0, 0.5], [0.3, 0.3], status="diverged",
         kwargs={"rho": 0.5, "lr_perturb": 0.001})
    best = ec.best_setting(tmp_path, ["sweep-sa-ind-rho0.1-lrp10", "sweep-sa-same-rho0.05-lrp1", "sweep-rs-rho0.5-lrp1"])
    assert best is not None and best["name"] == "sweep-sa-ind-rho0.1-lrp10" and best["alg"] == "sa-ind"
    assert best["rho"] == 0.1 and best["lr_perturb"] == 0.01 and best["kept_train_acc"]


def test_label_noise_criterion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ρ_s after step 0 from runs where the trace falls as the accuracy rises; the noiseless control keeps a
    higher trace. Each run's measurements are read once."""
    noisy = {f"label-noise-s{i}": _run(tmp_path, f"label-noise-s{i}", [30, 25 - i, 20, 15, 10, 8 + i * 0.1],
                                       [0.3, 0.31, 0.33, 0.35, 0.37, 0.40]) for i in range(3)}
    quiet = {f"noiseless-s{i}": _run(tmp_path, f"noiseless-s{i}", [30, 30, 29, 30, 31, 30 + i],
                                     [0.3, 0.3, 0.3, 0.3, 0.3, 0.3]) for i in range(3)}
    reads: list[str] = []
    read = ec.read_measurements

    def counted(path: Path) -> list:
        reads.append(path.name)
        return read(path)

    monkeypatch.setattr(ec, "read_measurements", counted)
    res = ec.label_noise_results({**noisy, **quiet})["G6"]
    assert sorted(reads) == sorted([*noisy, *quiet])
    assert all(p["after_step_0"]["rho"] == pytest.approx(-1.0) for p in res["spearman_per_seed"])
    assert res["verdict"] == "holds"
    assert math.isfinite(res["spearman_after_step_0"]["mean"])


def test_the_report_quotes_the_criteria(tmp_path: Path) -> None:
    """The markdown report carries every arm, each verdict as the criteria computed it, and the comparisons."""
    from sharpscope.experiments.report import study_report

    sa = _arm(tmp_path, "best-sa", [5.0, 5.2, 4.8], [0.50, 0.51, 0.49])
    rs = _arm(tmp_path, "best-rs", [10.0, 10.5, 9.5], [0.40, 0.41, 0.39])
    results = ec.escape_results({**sa, **rs})
    text = study_report(StudySummary(study="escape", scale="cpu", results=results))
    assert "| best-sa | 3 |" in text and "| best-rs | 3 |" in text
    assert f"**A3** — {results['A3']['criterion']}: **{results['A3']['verdict']}**" in text
    assert "| vs best-rs | trace |" in text


def test_run_numbers_are_the_first_and_last_finite_readings(tmp_path: Path) -> None:
    """Start and end of a run whose last loss is not finite: the end is each quantity's last finite value, and
    tr(H)/L is read from the two ends; a run without measurements has NaN ends and no test-set size."""
    path = _run(tmp_path, "x-s0", [20.0, 8.0, 6.0], [0.3, 0.4, 0.5], losses=[0.5, 0.25, "nan"])  # stored NaN
    s = ec.series(path)
    assert s.column("trace") == [20.0, 8.0, 6.0] and s.step == [0.0, 10.0, 20.0] and s.test_examples == 2000
    with pytest.raises(KeyError):
        s.column("status")
    nums = ec.run_numbers(s)
    assert (nums.status, nums.measurements, nums.test_examples, nums.min_train_acc) == ("completed", 3, 2000, 1.0)
    assert (nums.start.trace, nums.end.trace, nums.end.loss, nums.end.test_acc) == (20.0, 6.0, 0.25, 0.5)
    assert nums.start.trace_over_loss == 40.0 and nums.end.trace_over_loss == 24.0
    assert nums.end.value("trace_over_loss") == 24.0 and math.isnan(nums.end.trace_over_loss_stderr)
    summary = ec.arm_summary([s])
    assert summary.end["trace_over_loss"].values == [24.0] and summary.start["trace"].values == [20.0]
    assert (summary.seeds, summary.status, summary.min_train_acc, summary.test_examples) == (1, ["completed"], 1.0, 2000)
    assert summary.test_acc_stderr == pytest.approx(math.sqrt(0.5 * 0.5 / 2000), rel=1e-12)
    stored = summary.to_dict()
    assert list(stored)[:4] == ["seeds", "status", "trace", "trace_start"]
    assert list(stored)[-3:] == ["min_train_acc", "test_acc_stderr", "test_examples"]
    assert stored["trace_over_loss_start"]["values"] == [40.0]
    again = ec.ArmSummary.from_dict(jsonsafe.loads(jsonsafe.dumps(stored)))
    assert jsonsafe.dumps(again.to_dict()) == jsonsafe.dumps(stored)
    (path / "metrics.jsonl").write_text("")
    empty = ec.run_numbers(ec.series(path))
    assert empty.measurements == 0 and empty.test_examples is None and math.isnan(empty.end.value("trace"))


def test_a_matched_loss_reading_read_back_from_json_gives_the_same_comparison(tmp_path: Path) -> None:
    """:func:`versus` on the study's own reading and arm summaries and on those stored and read back: the same
    JSON, which is what the study stores, its numbers those of the typed comparison."""
    dirs = {**_arm(tmp_path, "best-sa", [5.0, 5.2, 4.8], [0.50, 0.51, 0.49]),
            **_arm(tmp_path, "best-rs", [10.0, 10.5, 9.5], [0.40, 0.41, 0.39])}
    runs = ec.arm_series(ec.arms(dirs))
    a, b = (ec.arm_summary(runs[k]) for k in ("best-sa", "best-rs"))
    matched = ec.at_matched_loss(runs)
    stored = ec.escape_results(dirs)["A3"]["matched_loss"]
    assert jsonsafe.dumps(stored) == jsonsafe.dumps(matched.to_dict())
    again = ec.MatchedLoss.from_dict(jsonsafe.loads(jsonsafe.dumps(stored)))
    direct, read = (ec.versus(a, b, m, "best-sa", "best-rs") for m in (matched, again))
    assert direct.at_lowest_common_loss is not None
    assert jsonsafe.dumps(direct.to_dict()) == jsonsafe.dumps(read.to_dict())
    results = jsonsafe.loads(jsonsafe.dumps(ec.escape_results(dirs)))
    stored_vs = results["A3"]["sa_vs_rs"]
    assert jsonsafe.dumps(stored_vs) == jsonsafe.dumps(direct.to_dict())
    a_read, b_read = (ec.ArmSummary.from_dict(results["arms"][k]) for k in ("best-sa", "best-rs"))
    assert jsonsafe.dumps(ec.versus(a_read, b_read, again, "best-sa", "best-rs").to_dict()) == jsonsafe.dumps(stored_vs)
    low = stored_vs["trace_at_lowest_common_loss"]
    assert low["difference"] == direct.at_lowest_common_loss.difference.estimate and low["verdict"] == "holds"
    assert (stored_vs["verdict"], stored_vs["mde"], stored_vs["better"]) == (direct.verdict.label, direct.verdict.mde,
                                                                             direct.verdict.passes)
