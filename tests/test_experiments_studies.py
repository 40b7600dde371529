"""Every recipe and every study runs at smoke scale; studies resume, chain their stages and draw figures."""

from __future__ import annotations

import json
from fnmatch import fnmatch
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from sharpscope.data import MissingDataError
from sharpscope.errors import ConfigError
from sharpscope.experiments import RECIPES, SCALES, get_recipe
from sharpscope.experiments.studies import STUDIES, run_study, study_stages
from sharpscope.track import RunDirectory, train

pytestmark = pytest.mark.usefixtures("single_thread")


# the recipes that studies run (so the study test trains them at smoke scale)
IN_STUDIES = {"eos-gd", "eos-momentum", "eos-ce", "sam-edge", "sam-edge-cnn", "sam-minibatch", "sam-flatness"}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder for the module: ``escape`` and ``label-noise`` share their bad-minimizer stages."""
    return tmp_path_factory.mktemp("studies")


def _folder(root: Path, name: str) -> Path:
    return root / ("escape" if name in ("escape", "label-noise") else name)


def needs_shared_data(error: ConfigError) -> bool:
    """A recipe or study that needs a file of the data root says so; without it the test skips."""
    return isinstance(error, MissingDataError)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_builds_at_every_scale_and_trains_at_smoke_scale(name: str, tmp_path: Path) -> None:
    for scale in SCALES:
        try:
            assert get_recipe(name, scale).curvature.hvp_mode != "auto"
        except ConfigError as e:
            if needs_shared_data(e):
                pytest.skip(str(e))
            raise
    if name in IN_STUDIES:  # trained by test_every_study_runs_at_smoke_scale_with_its_figures
        return
    summary = train(get_recipe(name, "smoke", {"steps": 2}), tmp_path / "run")
    assert summary.status == "completed" and summary.step == 2
    records = RunDirectory(tmp_path / "run").read_metrics()
    assert records and all(isinstance(r["eigenvalues"][0], float) for r in records)


@pytest.mark.parametrize("name", sorted(STUDIES))
def test_every_study_runs_at_smoke_scale_with_its_figures(name: str, root: Path, tmp_path: Path) -> None:
    from sharpscope.experiments.figures import study_figures

    out = _folder(root, name)
    try:
        summary = run_study(name, "smoke", out)
    except ConfigError as e:
        if needs_shared_data(e):
            pytest.skip(str(e))
        raise
    stages = [s.name for s in study_stages(name, "smoke")]
    assert list(summary.stages) == stages
    assert all(s.status in ("completed", "reached_train_acc", "reached_train_loss") for s in summary.stages.values())
    assert json.loads((out / f"{name}-summary.json").read_text()) == summary.to_json()  # written as returned
    for stage in study_stages(name, "smoke"):  # a stage that starts from another has its final weights
        if stage.init_from is not None:
            init = summary.stages[stage.name].init or {}
            assert init["path"] == summary.stages[stage.init_from].checkpoint
    again = run_study(name, "smoke", out)  # resumable: finished stages are not trained again
    assert all(s.already_complete for s in again.stages.values())
    files = study_figures(name, out, tmp_path / "figs", command="cmd")
    figures = [f for f in files if f.suffix == ".json" and not f.name.endswith("summary.json")]
    drawn = [f for f in STUDIES[name].figures if any(fnmatch(s, p) for p in f.stages for s in stages)]
    draw = STUDIES[name].draw
    from_summary = len(draw(summary)) if draw is not None else 0  # figures drawn from the study summary
    assert len(figures) == len(drawn) + from_summary  # a figure whose stages the study has at this scale (data present)
    for f in figures:
        stored = json.loads(f.read_text())
        assert stored["command"] == "cmd" and "measured on CPU" in stored["caption"] and "Scale 'smoke'" in stored["caption"] and (stored["data"]["plot"].get("runs") or stored["data"]["plot"].get("arms"))
        assert f.with_suffix(".png").stat().st_size > 0 and f.with_suffix(".pdf").stat().st_size > 0


def test_the_escape_data_sets(tmp_path: Path) -> None:
    """The confusion set alone for pre-training (copies of the clean images, 10% of positions zeroed, uniform
    random labels), one shared test split; clean ∪ confusion as the option; a folder keeps its construction."""
    run_study("escape", "smoke", tmp_path, only=["random-init-s0"])
    clean = np.load(tmp_path / "data" / "clean.npz")
    pre = np.load(tmp_path / "data" / "pretrain.npz")
    info = json.loads((tmp_path / "data" / "info.json").read_text())
    n, copies = len(clean["y"]), info["confusion"]["copies"]
    assert info["construction"] == "confusion" and len(pre["y"]) == n * copies
    orig = np.concatenate([clean["x"]] * copies)
    changed = (pre["x"] != orig).reshape(len(orig), -1)
    assert changed.any(1).all()  # every copy has zeroed positions, the rest unchanged
    assert np.array_equal(clean["x_test"], pre["x_test"])
    assert not (tmp_path / "pretrain").exists()  # only the requested stage (and what it starts from) ran
    with pytest.raises(ConfigError, match="construction"):
        run_study("escape", "smoke", tmp_path, only=["random-init-s0"], options={"construction": "clean+confusion"})
    mixed = tmp_path / "mixed"
    run_study("escape", "smoke", mixed, only=["random-init-s0"], options={"construction": "clean+confusion"})
    both = np.load(mixed / "data" / "pretrain.npz")
    assert len(both["y"]) == n * (1 + copies) and np.array_equal(both["x"][:n], clean["x"])
    with pytest.raises(ConfigError, match="unknown escape study option"):
        run_study("escape", "smoke", tmp_path / "x", options={"copies": 3})


def test_unknown_study_stage_and_scale_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown study 'nope'"):
        run_study("nope", "smoke", tmp_path)
    with pytest.raises(ConfigError, match="has no stage"):
        run_study("eos", "smoke", tmp_path, only=["gd-lr9"])
    with pytest.raises(ConfigError, match="unknown scale"):
        study_stages("eos", "huge")


def test_the_reproduce_command(root: Path, tmp_path: Path) -> None:
    """On a fresh folder it runs the requested stage only; on a finished study it just draws."""
    from sharpscope_cli.main import app

    out = tmp_path / "eos"
    result = CliRunner().invoke(app, ["reproduce", "eos", "--scale", "smoke", "--out", str(out), "--only", "momentum"])
    assert result.exit_code == 0, result.output
    assert [p.name for p in out.iterdir() if p.is_dir()] == ["momentum"]
    result = CliRunner().invoke(app, ["reproduce", "eos", "--scale", "smoke", "--out", str(_folder(root, "eos")),
                                      "--figures", str(tmp_path / "figs")])
    assert result.exit_code == 0, result.output
    stored = json.loads((tmp_path / "figs" / "eos-momentum-ce.json").read_text())
    assert stored["data"]["run_summaries"]["momentum"]["status"] == "completed"
    assert stored["command"].startswith("sharpscope reproduce eos --scale smoke")
    assert (tmp_path / "figs" / "eos-summary.json").is_file()
    bad = CliRunner().invoke(app, ["reproduce", "nope", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 1 and "unknown study" in bad.output


def test_every_study_figure_is_a_run_kind_of_the_one_registry() -> None:
    from sharpscope.experiments.studies import STUDIES
    from sharpscope.plots.kinds import RUN_KINDS

    kinds = {figure.kind for study in STUDIES.values() for figure in study.figures}
    assert kinds <= set(RUN_KINDS), kinds - set(RUN_KINDS)
