"""``sharpscope plot`` through Typer's test runner: files, recorded command and data, auto kind, clean errors."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from sharpscope_cli.main import app
from typer.testing import CliRunner

from sharpscope.io import jsonsafe
from sharpscope.plots.kinds import _kind_of_runs, auto_kind
from sharpscope.plots.runs import load_run
from sharpscope.plots.trajectory import sharpness_data
from sharpscope.track import RunDirectory

runner = CliRunner()


def test_sharpness_plot_writes_png_pdf_and_json_with_the_command(run_dirs: dict[str, Path], tmp_path: Path) -> None:
    stem = tmp_path / "figs" / "eos"
    args = ["plot", str(run_dirs["gd"]), str(run_dirs["sam"]), "--out", str(stem), "--labels", "GD,SAM", "--k", "2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("sharpness figure of 2 input(s)")
    assert (tmp_path / "figs" / "eos.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "figs" / "eos.pdf").read_bytes()[:5] == b"%PDF-"
    stored = json.loads((tmp_path / "figs" / "eos.json").read_text())
    assert stored["command"] == " ".join(["sharpscope", *args[:1], str(run_dirs["gd"]), str(run_dirs["sam"]),
                                          "--kind", "auto", *args[3:]])
    expected = {**sharpness_data([run_dirs["gd"], run_dirs["sam"]], labels=["GD", "SAM"], k=2),
                "draw": {"log": False}}  # the drawing options, so --from-figure draws the same figure
    assert stored["data"] == jsonsafe.to_jsonable(expected)


@pytest.mark.parametrize("kind", ["trace", "escape"])
def test_trace_and_escape_kinds(run_dirs: dict[str, Path], tmp_path: Path, kind: str) -> None:
    result = runner.invoke(app, ["plot", str(run_dirs["momentum"]), "--kind", kind, "--out", str(tmp_path / kind)])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / f"{kind}.json").read_text())["data"]["figure"] == (
        "trace_accuracy" if kind == "trace" else "escape")


def test_density_from_a_probe_json_file(tmp_path: Path) -> None:
    probe = tmp_path / "probe.json"
    probe.write_text(json.dumps({"eigenvalues": [2.0], "density": {
        "nodes": [[0.0, 2.0], [0.5, 2.0]], "weights": [[0.75, 0.25], [0.5, 0.5]], "sigma2": 0.01, "trace": 4.0,
        "trace_stderr": 0.5, "settings": {"grid_size": 50}}}))
    result = runner.invoke(app, ["plot", str(probe), "--out", str(tmp_path / "esd.png")])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "esd.json").read_text())["data"]
    assert data["figure"] == "density" and data["results"][0]["label"] == "probe"
    assert len(data["results"][0]["grid"]) == 50 and data["results"][0]["grid"][0] == pytest.approx(-0.02)


def test_auto_kind(run_dirs: dict[str, Path], tmp_path: Path) -> None:
    assert auto_kind([run_dirs["gd"], run_dirs["sam"]]) == "sharpness"
    run = load_run(run_dirs["momentum"])
    assert _kind_of_runs([dataclasses.replace(run, config={**run.config, "optimizer": "sa"})]) == "escape"
    no_eigs = dataclasses.replace(run, measurements=[dataclasses.replace(m, eigenvalues=None) for m in run.measurements])
    assert _kind_of_runs([no_eigs]) == "trace"
    (tmp_path / "a.json").write_text("{}")
    assert auto_kind([tmp_path / "a.json"]) == "density"


def _error_line(result) -> str:
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("error:") and result.stderr.count("\n") == 1, result.stderr
    return result.stderr


def test_bad_input_is_one_clean_line(run_dirs: dict[str, Path], tmp_path: Path) -> None:
    out = ["--out", str(tmp_path / "x")]
    assert "not a sharpscope run directory" in _error_line(runner.invoke(app, ["plot", str(tmp_path / "nope"), *out]))
    (tmp_path / "plain").mkdir()
    assert "no metrics.jsonl and no config.json" in _error_line(runner.invoke(app, ["plot", str(tmp_path / "plain"), *out]))
    RunDirectory(tmp_path / "empty").create({"model": {"name": "mlp"}})
    assert "no measurements recorded" in _error_line(runner.invoke(app, ["plot", str(tmp_path / "empty"), *out]))
    line = _error_line(runner.invoke(app, ["plot", str(run_dirs["gd"]), "--kind", "histogram", *out]))
    assert "unknown figure kind 'histogram'" in line and "sharpness" in line
    line = _error_line(runner.invoke(app, ["plot", str(run_dirs["gd"]), "--labels", "a,b", *out]))
    assert "2 label(s) for 1 input(s)" in line
    line = _error_line(runner.invoke(app, ["plot", str(run_dirs["sam"]), "--kind", "trace", *out]))
    assert "no Hessian trace recorded" in line
    assert not list(tmp_path.glob("x.*"))


def test_from_figure_draws_the_stored_numbers_again(run_dirs: dict[str, Path], tmp_path: Path) -> None:
    first = tmp_path / "first"
    args = ["plot", str(run_dirs["sam"]), "--out", str(first), "--log", "--caption", "c"]
    assert runner.invoke(app, args).exit_code == 0
    again = tmp_path / "again"
    result = runner.invoke(app, ["plot", "--from-figure", f"{first}.json", "--out", str(again)])
    assert result.exit_code == 0, result.output
    stored, redrawn = (json.loads(Path(f"{p}.json").read_text()) for p in (first, again))
    assert redrawn == stored  # the same numbers, drawing options ({"log": true}), caption and command
    assert stored["data"]["draw"] == {"log": True}
    assert Path(f"{again}.png").read_bytes()[:4] == b"\x89PNG"
    bad = runner.invoke(app, ["plot", str(run_dirs["sam"]), "--from-figure", f"{first}.json"])
    assert bad.exit_code != 0 and "--from-figure draws from one figure's JSON" in bad.output
    missing = runner.invoke(app, ["plot", str(run_dirs["sam"])])
    assert missing.exit_code != 0 and "--out STEM" in missing.output
