"""``sharpscope train`` through the installed entry point: SIGKILL mid-run and resume; clean refusals."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sharpscope.io.jsonsafe import without_timings
from sharpscope.track import RunDirectory
from tests.track.test_track_logs import csv_rows, tensorboard_scalars

SCRIPT = Path(sys.executable).parent / "sharpscope"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # no oversubscription on small machines
TIMEOUT = 240


def command(out: Path, *extra: str) -> list[str]:
    return [str(SCRIPT), "train", "eos-gd", "--scale", "smoke", "--out", str(out), *extra]


def start(out: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(command(out, *extra), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)




def logs(out: Path) -> list[str]:
    """``--log`` entries of a run: a CSV, and TensorBoard where it is installed."""
    entries = ["--log", f"csv:{out}.csv"]
    if importlib.util.find_spec("tensorboard") is not None:
        entries += ["--log", f"tensorboard:{out}-tb"]
    return entries


def test_a_run_killed_with_sigkill_resumes_to_the_same_metrics_exactly_once(tmp_path: Path) -> None:
    """... and to the same CSV rows and TensorBoard scalars (read back from the event files), each step once."""
    reference = start(tmp_path / "ref", *logs(tmp_path / "ref"))  # uninterrupted, in parallel with the victim
    victim = start(tmp_path / "run", *logs(tmp_path / "run"))
    run = RunDirectory(tmp_path / "run")
    deadline = time.monotonic() + TIMEOUT
    while True:  # wait until the run is genuinely mid-way: a checkpoint past step 0, records written
        latest = run.latest_checkpoint()
        if latest is not None and latest[0] >= 10:
            break
        assert victim.poll() is None, f"the run ended before it could be killed: {victim.communicate()}"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.005)
    os.kill(victim.pid, signal.SIGKILL)
    victim.communicate(timeout=TIMEOUT)
    assert victim.returncode == -signal.SIGKILL
    assert not run.summary_path.exists(), "the victim finished before the kill landed"
    before = run.read_metrics(torn_ok=True)
    assert before and max(r["step"] for r in before) < 60

    resumed = subprocess.run(command(tmp_path / "run", *logs(tmp_path / "run")), env=ENV, capture_output=True,
                             text=True, timeout=TIMEOUT)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from step" in resumed.stdout and resumed.stdout.count("\n") == 1
    out, errs = reference.communicate(timeout=TIMEOUT)
    assert reference.returncode == 0, errs

    summary = run.read_summary()
    assert summary is not None and summary["status"] == "completed"
    assert 10 <= summary["session"]["resumed_from_step"] < 60
    records = run.read_metrics()
    expected = RunDirectory(tmp_path / "ref").read_metrics()
    steps = [r["step"] for r in records]
    assert steps == list(range(0, 61, 5)) == [r["step"] for r in expected]  # each once, none lost
    assert without_timings(records) == without_timings(expected)  # bit-identical values
    assert all(r["warm_start"] for r in records[1:])
    assert without_timings(summary["final"]) == without_timings(RunDirectory(tmp_path / "ref").read_summary()["final"])
    assert csv_rows(tmp_path / "run.csv") == csv_rows(tmp_path / "ref.csv")
    assert len(csv_rows(tmp_path / "run.csv")) == len(records)
    if importlib.util.find_spec("tensorboard") is not None:
        scalars = tensorboard_scalars(tmp_path / "run-tb")
        assert scalars == tensorboard_scalars(tmp_path / "ref-tb")
        assert [step for step, _ in scalars["sharpness/lambda_max"]] == steps


def test_reruns_and_refusals_are_one_clean_line(tmp_path: Path) -> None:
    out = tmp_path / "run"
    run = RunDirectory(out)
    run.create({"model": {"name": "mlp"}, "steps": 1})  # a run of another config
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "data.txt").write_text("x")
    procs = [start(out), start(foreign)]
    results = [p.communicate(timeout=TIMEOUT) for p in procs]
    for proc, (stdout, stderr) in zip(procs, results):
        assert proc.returncode == 1 and stdout == ""
        assert stderr.startswith("error:") and stderr.count("\n") == 1, stderr
    assert "different configuration" in results[0][1] and "force" in results[0][1]  # the flag, or force=True
    assert "not a sharpscope run directory" in results[1][1] and "force" in results[1][1]
    assert (foreign / "data.txt").read_text() == "x" and not (foreign / "config.json").exists()
    assert run.read_config() == {"model": {"name": "mlp"}, "steps": 1}
