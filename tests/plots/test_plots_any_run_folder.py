"""``sharpscope plot`` on every run folder sharpscope writes: a tracker's (the README's loop), a study's, and what it cannot draw."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from sharpscope_cli.main import app
from torch import nn
from typer.testing import CliRunner

from sharpscope.curvature import CurvatureSettings
from sharpscope.errors import ConfigError
from sharpscope.losses import mse
from sharpscope.plots.runs import expand_runs, load_run
from sharpscope.track import CSVSink, JSONLSink, MultiSink, RunDirectory, SharpnessTracker

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("single_thread")


def tracker_folder(folder: Path, *, with_optimizer: bool = True, k: int = 2) -> Path:
    """The README's hand-written loop: a tracker whose sink writes ``folder`` through a RunDirectory (and a CSV)."""
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(48, 5, generator=gen), torch.randint(0, 3, (48,), generator=gen)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2)
    sink = MultiSink(JSONLSink(RunDirectory(folder)), CSVSink(folder / "metrics.csv"))
    tracker = SharpnessTracker((x, y), mse, every=2, curvature=CurvatureSettings(k=k, hvp_mode="rev-rev"), sink=sink)
    for step in range(5):
        tracker.maybe_measure(step, model, optimizer if with_optimizer else None)
        optimizer.zero_grad()
        mse(model(x), y).backward()
        optimizer.step()
    return folder


def test_plot_draws_the_folder_the_readme_tracker_example_writes(tmp_path: Path) -> None:
    folder = tracker_folder(tmp_path / "mine")
    assert not (folder / "config.json").exists()
    run = load_run(folder)
    assert run.config == {} and [m.step for m in run.measurements] == [0, 2, 4]
    result = runner.invoke(app, ["plot", str(folder), "--out", str(tmp_path / "fig")])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("sharpness figure of 1 input(s)") and result.stderr == ""
    data = json.loads((tmp_path / "fig.json").read_text())["data"]
    lam = [m.lambda_max for m in run.measurements]
    assert data["runs"][0]["eigenvalues"][0] == lam and data["runs"][0]["edge"] == [2 / 0.2] * 3


def test_plot_says_in_one_line_each_what_it_cannot_draw(tmp_path: Path) -> None:
    folder = tracker_folder(tmp_path / "bare", with_optimizer=False, k=1)
    result = runner.invoke(app, ["plot", str(folder), "--k", "3", "--out", str(tmp_path / "fig")])
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [
        "note: bare: no edge line: no thresholds recorded (give the tracker the optimizer: "
        "tracker.maybe_measure(step, model, optimizer))",
        "note: bare: λ_2..λ_3 not drawn: only 1 eigenvalue(s) recorded per measurement"]
    assert json.loads((tmp_path / "fig.json").read_text())["data"]["runs"][0]["edge"] is None


def test_a_folder_of_runs_is_plotted_as_its_runs(tmp_path: Path) -> None:
    study = tmp_path / "study"
    tracker_folder(study / "a")
    shutil.copytree(study / "a", study / "b")
    (study / "data").mkdir()  # a study's other folders are not runs
    assert expand_runs([study]) == [study / "a", study / "b"]
    result = runner.invoke(app, ["plot", str(study), "--out", str(tmp_path / "fig")])
    assert result.exit_code == 0, result.output
    assert [r["label"] for r in json.loads((tmp_path / "fig.json").read_text())["data"]["runs"]] == ["a", "b"]


def test_a_folder_without_records_is_one_clear_line(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "metrics.csv").write_text("kind,step\n")
    with pytest.raises(ConfigError, match="no metrics.jsonl and no config.json .*RunDirectory or JSONLSink"):
        load_run(tmp_path / "plain")
    result = runner.invoke(app, ["plot", str(tmp_path / "plain"), "--out", str(tmp_path / "x")])
    assert result.exit_code == 1 and result.stderr.count("\n") == 1 and "no metrics.jsonl" in result.stderr
    (tmp_path / "slice").mkdir()
    (tmp_path / "slice" / "slice.json").write_text("{}")
    with pytest.raises(ConfigError, match="loss-landscape slice .* sharpscope landscape draws its figures"):
        load_run(tmp_path / "slice")
