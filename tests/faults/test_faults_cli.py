"""The command line under faults: every bad input is one line and exit code 1 before any work;
a diverged run exits 3, an interrupted one 130 (and resumes); a disk error is one line."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sharpscope_cli.main import app
from typer.testing import CliRunner

from sharpscope.io import save_checkpoint
from sharpscope.models import ModelSpec
from sharpscope.track import RunDirectory
from tests.faults.faults_helpers import ENV, SCRIPT, TIMEOUT

pytestmark = pytest.mark.usefixtures("single_thread")


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def one_line_error(code: int, output: str, *needles: str) -> None:
    assert code == 1, output
    assert output.startswith("error: ") and output.count("\n") == 1 and "Traceback" not in output, output
    for needle in needles:
        assert needle in output, (needle, output)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("inputs")
    torch.manual_seed(0)
    cnn = ModelSpec("cnn", {"in_channels": 1, "num_classes": 10, "channels": [4], "image_size": 8})
    mlp = ModelSpec("mlp", {"in_features": 40, "num_classes": 10, "widths": [8]})
    (folder / "factory_mod.py").write_text(
        "from sharpscope.models import ModelSpec\n"
        "def wide():\n    return ModelSpec('mlp', {'in_features': 12, 'num_classes': 10, 'widths': [8]}).build()\n")
    x = torch.randn(16, 40, generator=torch.Generator().manual_seed(0))
    np.savez(folder / "flat.npz", x=x[:, 0].numpy(), y=np.arange(16) % 10)
    np.savez(folder / "huge.npz", x=np.full((16, 40), 1e300), y=np.arange(16) % 10)
    return {"folder": folder, "cnn": save_checkpoint(folder / "cnn.safetensors", cnn.build(), spec=cnn),
            "mlp": save_checkpoint(folder / "mlp.safetensors", mlp.build(), spec=mlp)}


def test_probe_checks_that_the_model_takes_the_data_before_measuring(files: dict[str, Path]) -> None:
    one_line_error(*cli("probe", str(files["cnn"]), "--data", "mnist1d", "--n", "8"),
                   "(N, 1, H, W)", "Conv2d", "(40,) per example")
    one_line_error(*cli("probe", str(files["mlp"]), "--data", f"npz:{files['folder'] / 'flat.npz'}"),
                   "(N, 40)", "shape () per example")
    cwd = os.getcwd()
    os.chdir(files["folder"])
    try:
        one_line_error(*cli("probe", str(files["mlp"]), "--data", "mnist1d", "--n", "8", "--model", "factory_mod:wide"),
                       "does not fit")
        one_line_error(*cli("probe", str(files["mlp"]), "--data", "mnist1d", "--model", ".factory_mod:wide"),
                       "relative module paths are not supported")
    finally:
        os.chdir(cwd)
    one_line_error(*cli("probe", str(files["mlp"]), "--data", f"npz:{files['folder'] / 'huge.npz'}"),
                   "1e+300", "overflow float32")  # the data files are stored as float32


@pytest.mark.parametrize("args, needle", [
    (("--seed", "99999999999999999999"), "seed must be an integer in [0, 18446744073709551615]"),
    (("--device", "meta"), "not meta"),
    (("--tol", "1e300"), "tol must be in (0.0, 1.0)"),
    (("--tol", "inf"), "tol must be finite"),
    (("--trace", "--trace-matvecs", "4"), "Hutch++ needs --trace-matvecs >= 6"),  # the flag of trace_matvecs
    (("--trace", "--trace-matvecs", "1000000000"), "--trace-matvecs=1,000,000,000 is over the limit of 100,000"),
])
def test_probe_options_are_checked_before_any_product(files: dict[str, Path], args: tuple[str, ...],
                                                      needle: str) -> None:
    one_line_error(*cli("probe", str(files["mlp"]), "--data", "mnist1d", "--n", "8", *args), needle)


def test_train_and_landscape_options_are_checked_before_any_work(tmp_path: Path, files: dict[str, Path]) -> None:
    out = tmp_path / "run"
    deep = "[" * 40 + "]" * 40
    for args, needle in [(("--set", "seed=99999999999999999999"), "seed must be an integer in"),
                         (("--set", "device=meta"), "not meta"),
                         (("--set", f"optimizer_kwargs.lr={deep}"), "more than 32 levels deep"),
                         (("--set", "tol=1e300"), "tol must be in (0.0, 1.0)")]:
        one_line_error(*cli("train", "eos-gd", "--out", str(out), *args), needle)
        assert not out.exists()
    existing = tmp_path / "a-file"
    existing.write_text("mine")
    one_line_error(*cli("landscape", str(files["mlp"]), "--data", "mnist1d", "--out", str(existing)),
                   "exists and is not a folder")
    one_line_error(*cli("landscape", str(files["mlp"]), "--data", "mnist1d", "--out", str(existing / "sub")),
                   "is a file")
    one_line_error(*cli("landscape", str(files["mlp"]), "--data", "mnist1d", "--out", str(tmp_path / "s"),
                        "--alphas", "0:1:2000000000"), "GiB", "use fewer points")
    assert existing.read_text() == "mine" and not (tmp_path / "s").exists()


def test_a_demo_step_budget_over_its_limit_is_refused_before_training() -> None:
    one_line_error(*cli("demo", "--steps", "100000000000"), "--steps=100,000,000,000 is over the limit",
                   "15.8 years", "sharpscope train")


def test_a_diverged_run_exits_3_and_says_so(tmp_path: Path) -> None:
    args = ("train", "eos-gd", "--out", str(tmp_path / "run"), "--set", "model.kwargs.activation=relu",
            "--set", "optimizer_kwargs.lr=50", "--set", "trace=false", "--set", "steps=30")
    code, output = cli(*args)
    assert code == 3 and "diverged at step" in output and "non-finite loss" in output, output
    assert RunDirectory(tmp_path / "run").read_summary()["status"] == "diverged"
    code, output = cli(*args)  # the finished run again: still diverged, still 3
    assert code == 3 and "already complete" in output


def test_a_disk_error_is_one_line_with_the_errno(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "fsync", full)
    one_line_error(*cli("train", "eos-gd", "--out", str(tmp_path / "run")), "No space left on device (ENOSPC)",
                   "nothing it had written was lost", "rerun the same command to resume")


# The command in a real process whose training sends itself SIGINT once step 10 is done: the signal
# arrives at a known point however loaded the machine is (a signal from outside could arrive after
# a short run had already finished). The child restores Python's Ctrl-C handler, which a test run
# started as a background job of a non-interactive shell would otherwise pass on as "ignore SIGINT".
INTERRUPTED_AT_10 = """
import os, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)
import sharpscope.track as track
from sharpscope_cli.main import app

real_train = track.train

def train(cfg, out_dir, *, force=False, progress=None):
    def hook(step, total, record):
        if step == 10:
            os.kill(os.getpid(), signal.SIGINT)
        if progress is not None:
            progress(step, total, record)
    return real_train(cfg, out_dir, force=force, progress=hook)

track.train = train
app(sys.argv[1:], prog_name="sharpscope")
"""


def test_ctrl_c_exits_130_with_one_line_and_the_rerun_resumes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["train", "eos-gd", "--scale", "smoke", "--out", str(out), "--set", "steps=40", "--set", "measure_every=20"]
    victim = subprocess.run([sys.executable, "-c", INTERRUPTED_AT_10, *args], env=ENV, capture_output=True, text=True,
                            timeout=TIMEOUT)
    assert victim.returncode == 130 and victim.stdout == "", (victim.returncode, victim.stdout, victim.stderr)
    assert victim.stderr.startswith("interrupted") and victim.stderr.count("\n") == 1, victim.stderr
    assert RunDirectory(out).latest_checkpoint()[0] <= 10  # stopped at step 10, not at the end
    again = subprocess.run([str(SCRIPT), *args], env=ENV, capture_output=True, text=True, timeout=TIMEOUT)
    assert again.returncode == 0 and "resumed from step" in again.stdout, again.stderr


def test_sigterm_stops_a_run_like_ctrl_c_with_exit_143_and_the_rerun_resumes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["train", "eos-gd", "--scale", "smoke", "--out", str(out), "--set", "steps=40", "--set", "measure_every=20"]
    script = INTERRUPTED_AT_10.replace("signal.SIGINT)\n        if progress", "signal.SIGTERM)\n        if progress")
    assert "SIGTERM" in script
    victim = subprocess.run([sys.executable, "-c", script, *args], env=ENV, capture_output=True, text=True,
                            timeout=TIMEOUT)
    assert victim.returncode == 143 and victim.stdout == "", (victim.returncode, victim.stdout, victim.stderr)
    assert victim.stderr.startswith("terminated (SIGTERM)") and victim.stderr.count("\n") == 1, victim.stderr
    run = RunDirectory(out)
    assert run.latest_checkpoint()[0] <= 10 and run.read_summary() is None  # stopped at step 10, not finished
    assert not [p.name for p in out.rglob("*.tmp")]  # no write left half done
    again = subprocess.run([str(SCRIPT), *args], env=ENV, capture_output=True, text=True, timeout=TIMEOUT)
    assert again.returncode == 0 and "resumed from step" in again.stdout, again.stderr


def test_reproduce_exits_3_naming_the_run_that_diverged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sharpscope.experiments import studies
    from sharpscope.experiments.studies.framework import Stage, Study
    from tests.faults.faults_helpers import tiny

    def calm(scale: str, out: Path):  # type: ignore[no-untyped-def]
        return tiny(steps=3, measure_every=3, checkpoint_every=3)

    def wild(scale: str, out: Path):  # type: ignore[no-untyped-def]
        return tiny(steps=6, measure_every=3, checkpoint_every=3, trace=False, optimizer_kwargs={"lr": 1e30},
                    model={"name": "mlp", "kwargs": {"in_features": 40, "num_classes": 10, "widths": [8],
                                                     "activation": "relu"}})

    study = Study("two-runs", checks=(), stages=lambda scale: [Stage("calm", calm), Stage("wild", wild)],
                  evaluate=lambda dirs: {"runs": sorted(dirs)})
    monkeypatch.setitem(studies.STUDIES, "two-runs", study)
    code, output = cli("reproduce", "two-runs", "--out", str(tmp_path / "study"))
    assert code == 3 and "diverged: wild (non-finite training loss" in output and "calm," not in output, output
    assert RunDirectory(tmp_path / "study" / "wild").read_summary()["status"] == "diverged"
    monkeypatch.setitem(studies.STUDIES, "two-runs", Study("two-runs", checks=(), evaluate=lambda dirs: {},
                                                            stages=lambda scale: [Stage("calm", calm)]))
    code, output = cli("reproduce", "two-runs", "--out", str(tmp_path / "study"))
    assert code == 0, output  # the same study without the diverging run
