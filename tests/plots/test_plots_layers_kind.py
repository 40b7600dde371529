"""``sharpscope plot --kind layers``: per-layer curvature bars from the JSON of ``sharpscope probe --per-layer``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sharpscope_cli.main import app
from typer.testing import CliRunner

from sharpscope.io import jsonsafe, save_checkpoint
from sharpscope.models import ModelSpec
from sharpscope.plots.kinds import auto_kind, make_figure

pytestmark = pytest.mark.usefixtures("single_thread")
runner = CliRunner()
SPEC = ModelSpec("mlp", {"in_features": 6, "num_classes": 3, "widths": [5, 4], "activation": "tanh"})


@pytest.fixture(scope="module")
def probes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The JSON of a real per-layer probe (with traces) and of a density probe, of a tiny MLP."""
    folder = tmp_path_factory.mktemp("layers-kind")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(80, 6, generator=gen)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    np.savez(folder / "data.npz", x=x.numpy(), y=y.numpy())
    torch.manual_seed(0)
    ckpt = save_checkpoint(folder / "model.safetensors", SPEC.build(), spec=SPEC)
    common = ["probe", str(ckpt), "--data", f"npz:{folder / 'data.npz'}", "--json", "--dtype", "float64",
              "--hvp-mode", "rev-rev", "--device", "cpu"]
    out = {}
    for name, extra in (("layers", ["--per-layer", "--trace", "--trace-matvecs", "12", "--tol", "1e-10"]),
                        ("density", ["--density", "--density-steps", "8", "--density-runs", "2"])):
        result = runner.invoke(app, [*common, *extra])
        assert result.exit_code == 0, result.output
        out[name] = folder / f"{name}.json"
        out[name].write_text(result.stdout)
    return out


def test_layers_plot_draws_the_probe_rows_and_stores_them_with_the_command(probes: dict[str, Path],
                                                                            tmp_path: Path) -> None:
    stem = tmp_path / "figs" / "layers"
    args = ["plot", str(probes["layers"]), "--kind", "layers", "--out", str(stem), "--caption", "tiny MLP"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("layers figure of 1 input(s)")
    assert stem.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    assert stem.with_suffix(".pdf").read_bytes()[:5] == b"%PDF-"
    report = json.loads(probes["layers"].read_text())
    stored = json.loads(stem.with_suffix(".json").read_text())
    assert stored["caption"] == "tiny MLP"
    assert stored["command"] == " ".join(["sharpscope", *args[:-2]])
    assert stored["data"]["per_layer"] == jsonsafe.to_jsonable(report["per_layer"])
    assert stored["data"]["checkpoint"] == report["checkpoint"]

    rows = report["per_layer"]["layers"]
    assert [r["name"] for r in rows] == ["hidden.0", "hidden.1", "out"]
    kind, fig, _ = make_figure("layers", [probes["layers"]])
    assert kind == "layers" and len(fig.axes) == 2
    top, trace = fig.axes
    assert [t.get_text() for t in top.get_yticklabels()] == [r["name"] for r in rows]
    np.testing.assert_array_equal([p.get_width() for p in top.patches], [r["eigenvalues"][0] for r in rows])
    np.testing.assert_array_equal([p.get_width() for p in trace.patches], [r["trace"]["estimate"] for r in rows])


def test_auto_picks_layers_for_per_layer_json_and_density_otherwise(probes: dict[str, Path], tmp_path: Path) -> None:
    assert auto_kind([probes["layers"]]) == "layers"
    assert auto_kind([probes["density"]]) == "density"
    result = runner.invoke(app, ["plot", str(probes["layers"]), "--out", str(tmp_path / "auto")])
    assert result.exit_code == 0 and result.stdout.startswith("layers figure of 1 input(s)"), result.output


@pytest.mark.parametrize("case, message", [("two", "plots one probe JSON file"),
                                           ("no-rows", "no per-layer curvature"), ("folder", "not a file")])
def test_layers_plot_refuses_bad_inputs_in_one_line(probes: dict[str, Path], tmp_path: Path, case: str,
                                                    message: str) -> None:
    inputs = {"two": [probes["layers"], probes["layers"]], "no-rows": [probes["density"]],
              "folder": [probes["layers"].parent]}[case]
    result = runner.invoke(app, ["plot", *map(str, inputs), "--kind", "layers", "--out", str(tmp_path / "x")])
    assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "x.png").exists()
