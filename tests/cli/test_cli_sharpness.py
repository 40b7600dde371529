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
    result = invoke(checkpoint, "--sharpness", "keskar,pacbayes", "--sharpness-norm", "linf")
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
