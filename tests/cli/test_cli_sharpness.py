"""``probe --sharpness``: the measures beside λ_max in the JSON and the table, as the library computes them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from sharpscope_cli.main import app
from typer.testing import CliRunner

from sharpscope.curvature import Objective
from sharpscope.data import resolve_data
from sharpscope.errors import ConfigError
from sharpscope.io import load_checkpoint
from sharpscope.losses import get_loss
from sharpscope.measures import SharpnessSettings, measure
from sharpscope.models import ModelSpec
from sharpscope.probe import ProbeSettings
from sharpscope.validation import offset_seed

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sharpscope.io import save_checkpoint

    folder = tmp_path_factory.mktemp("sharpness")
    spec = ModelSpec("mlp", {"in_features": 40, "num_classes": 10, "widths": [8], "activation": "relu"})
    torch.manual_seed(0)
    return save_checkpoint(folder / "model.safetensors", spec.build(), spec=spec)


def invoke(checkpoint: Path, *args: str) -> object:
    return runner.invoke(app, ["probe", str(checkpoint), "--data", "mnist1d", "--n", "60", "--device", "cpu",
                               "--dtype", "float64", *args])


def test_probe_json_carries_each_measure_as_the_library_computes_it(checkpoint: Path) -> None:
    result = invoke(checkpoint, "--json", "--sharpness", "worst,average,jacobian", "--rho", "0.1", "--m", "20",
                    "--adaptive")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    sharp = out["sharpness"]
    assert list(sharp) == ["worst", "average", "jacobian"]
    seed = offset_seed(0, 4)
    assert out["settings"]["seeds"]["sharpness"]["seed"] == seed
    assert out["settings"]["sharpness_settings"]["rho"] == 0.1 and out["settings"]["sharpness_settings"]["adaptive"]
    worst = sharp["worst"]
    assert worst["settings"]["m"] == 20 and worst["settings"]["adaptive"] is True and worst["details"]["sets"] == 3
    assert worst["convergence"]["steps"] == 20 and worst["stderr"] > 0 and worst["forwards"] > 0
    assert "m" not in sharp["jacobian"]["settings"]
    loaded = load_checkpoint(checkpoint)
    data = resolve_data("mnist1d", n=60)
    model = loaded.model.double()
    objective = Objective(model, get_loss("ce"), (data.x.double(), data.y))
    settings = SharpnessSettings(rho=0.1, m=20, adaptive=True, seed=seed)
    assert sharp["worst"]["value"] == pytest.approx(measure("worst", objective, settings).value, rel=1e-9)
    assert sharp["average"]["value"] == pytest.approx(measure("average", objective, settings).value, rel=1e-9)
    assert sharp["jacobian"]["value"] == pytest.approx(measure("jacobian", objective).value, rel=1e-9)


def test_probe_table_shows_the_measures_and_their_settings(checkpoint: Path) -> None:
    result = invoke(checkpoint, "--sharpness", "worst,keskar,pacbayes", "--sharpness-norm", "linf")
    assert result.exit_code == 0, result.output
    assert "Keskar ε-sharpness" in result.stdout and "PAC-Bayes 1/σ²" in result.stdout
    assert "sharpness ρ=0.05 linf" in result.stdout


@pytest.mark.parametrize(("args", "words"), [
    (["--sharpness", "worst,nope"], "--sharpness must name measures among worst, average, keskar, pacbayes, jacobian, ggn; got unknown 'nope'"),
    (["--sharpness", "worst", "--rho", "0"], "--rho must be > 0.0"),
    (["--sharpness", "average", "--m", "0"], "--m must be a positive integer"),
])
def test_bad_sharpness_options_fail_with_one_line_naming_the_flag(checkpoint: Path, args: list[str],
                                                                  words: str) -> None:
    result = invoke(checkpoint, *args)
    assert result.exit_code != 0
    assert words in result.output and "Traceback" not in result.output


def test_probe_settings_refuse_sharpness_on_a_sharded_model() -> None:
    with pytest.raises(ConfigError, match=r"sharpness=\[.worst.\] does not apply to a sharded model"):
        ProbeSettings(shard="fsdp", sharpness=("worst",))
    assert ProbeSettings(sharpness="ggn, worst").sharpness == ("ggn", "worst")  # type: ignore[arg-type]


def test_every_setting_of_the_measures_has_one_probe_flag_with_the_librarys_default() -> None:
    import inspect
    from dataclasses import fields

    from sharpscope_cli._common import SHARPNESS_FLAGS, command_flags
    from sharpscope_cli.main import probe_cmd

    from sharpscope.measures.settings import DEFAULTS

    assert set(SHARPNESS_FLAGS) == {f.name for f in fields(SharpnessSettings)} - {"seed"}  # --seed derives it
    flags = command_flags(probe_cmd)
    params = inspect.signature(probe_cmd).parameters
    docs = (Path(__file__).resolve().parents[2] / "docs" / "measures.md").read_text(encoding="utf-8")
    for field, flag in SHARPNESS_FLAGS.items():
        [param] = [p for p, spelled in flags.items() if flag in spelled]
        default = params[param].default
        assert getattr(default, "value", default) == getattr(DEFAULTS, field), flag
        assert f"| `{field}` | `{flag}" in docs, f"docs/measures.md lacks {field} / {flag}"


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")  # torch's forward-mode set-up
def test_probe_flags_reach_each_measure(checkpoint: Path) -> None:
    result = invoke(checkpoint, "--json", "--sharpness", "worst,average,keskar,pacbayes,jacobian",
                    "--ascent-steps", "3", "--restarts", "2", "--sharpness-samples", "4", "--pacbayes-target", "0.05",
                    "--pacbayes-tol", "0.05", "--keskar-epsilon", "0.01", "--output-trace", "hutchinson",
                    "--output-trace-matvecs", "8", "--output-trace-block", "4")
    assert result.exit_code == 0, result.output
    sharp = json.loads(result.stdout)["sharpness"]
    for name in ("worst", "keskar"):
        assert sharp[name]["settings"]["steps"] == 3 and sharp[name]["settings"]["restarts"] == 2
        assert sharp[name]["convergence"]["steps"] == 3 and len(sharp[name]["convergence"]["runs_increase"]) == 2
    assert sharp["keskar"]["settings"]["epsilon"] == 0.01
    assert sharp["average"]["settings"]["samples"] == 4 and sharp["pacbayes"]["settings"]["samples"] == 4
    assert sharp["pacbayes"]["settings"]["target"] == 0.05 and sharp["pacbayes"]["settings"]["tol"] == 0.05
    assert sharp["jacobian"]["settings"]["trace"] == "hutchinson" and sharp["jacobian"]["settings"]["matvecs"] == 8
    loaded = load_checkpoint(checkpoint)
    data = resolve_data("mnist1d", n=60)
    objective = Objective(loaded.model.double(), get_loss("ce"), (data.x.double(), data.y))
    settings = SharpnessSettings(steps=3, restarts=2, samples=4, target=0.05, tol=0.05, epsilon=0.01,
                                 trace="hutchinson", matvecs=8, block=4, seed=offset_seed(0, 4))
    for name in ("keskar", "pacbayes", "jacobian"):
        assert sharp[name]["value"] == pytest.approx(measure(name, objective, settings).value, rel=1e-9), name


@pytest.mark.parametrize(("args", "words"), [
    (["--ascent-steps", "0"], "--ascent-steps must be"),
    (["--restarts", "0"], "--restarts must be"),
    (["--sharpness-samples", "1"], "--sharpness-samples must be"),
    (["--pacbayes-target", "-0.1"], "--pacbayes-target must be > 0.0"),
    (["--pacbayes-tol", "2"], "--pacbayes-tol must be"),
    (["--keskar-epsilon", "0"], "--keskar-epsilon must be > 0.0"),
    (["--output-trace", "hutch++", "--output-trace-matvecs", "5"], "Hutch++ needs --output-trace-matvecs >= 6"),
    (["--output-trace-block", "0"], "--output-trace-block must be"),
    (["--output-trace", "lanczos"], "Invalid value for '--output-trace'"),
])
def test_a_bad_measure_setting_fails_with_one_line_before_any_work(tmp_path: Path, args: list[str],
                                                                   words: str) -> None:
    # the checkpoint does not exist: failing on the setting shows it was checked before anything was loaded
    result = invoke(tmp_path / "absent.safetensors", "--sharpness", "worst", *args)
    assert result.exit_code != 0
    assert words in result.output and "Traceback" not in result.output and "absent" not in result.output
    if "Invalid value" not in words:  # typer's own choice error is a box; ours is one line
        assert len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize(("args", "words"), [
    (["--sharpness", "worst", "--keskar-epsilon", "0.01"],
     "--keskar-epsilon applies to keskar, and --sharpness names only worst"),
    (["--sharpness", "jacobian,keskar", "--m", "8"],
     "--m applies to worst, average, and --sharpness names only jacobian, keskar"),
    (["--rho", "0.1"], "--rho applies to worst, average, and --sharpness is not given"),
    (["--sharpness", "worst", "--output-trace", "exact"], "--output-trace applies to jacobian, ggn"),
])
def test_a_measure_flag_that_changes_nothing_is_refused_before_any_work(tmp_path: Path, args: list[str],
                                                                       words: str) -> None:
    result = invoke(tmp_path / "absent.safetensors", *args)
    assert result.exit_code == 1 and words in result.output and "absent" not in result.output
    assert len(result.output.strip().splitlines()) == 1
