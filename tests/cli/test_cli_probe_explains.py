"""``probe`` outputs that explain themselves: the solver's settings, one meaning per key, derived seeds,
labels that name the operator, the BatchNorm policy only with BatchNorm, TF32 where it does nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from sharpscope_cli.main import app, quantity_labels, settings_caption
from typer.testing import CliRunner

from sharpscope.io import save_checkpoint
from sharpscope.models import ModelSpec
from sharpscope.probe import derived_seeds, precision_note
from sharpscope.validation import offset_seed

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("explain")
    spec = ModelSpec("mlp", {"in_features": 40, "num_classes": 10, "widths": [12], "activation": "tanh"})
    torch.manual_seed(0)
    return save_checkpoint(folder / "model.safetensors", spec.build(), spec=spec)


def probe_json(checkpoint: Path, *args: str) -> tuple[dict, str]:
    """``sharpscope probe CHECKPOINT --json ...`` through Typer's runner (in process: no start-up cost)."""
    result = runner.invoke(app, ["probe", str(checkpoint), "--data", "mnist1d", "--n", "200", "--device", "cpu",
                                 "--json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), result.stderr


def test_probe_json_carries_the_solver_settings_and_one_meaning_per_key(checkpoint: Path) -> None:
    single, quiet = probe_json(checkpoint, "--k", "2")
    block, notes = probe_json(checkpoint, "--k", "2", "--block", "3", "--negative", "--trace", "--seed", "7",
                              "--precision", "tf32")
    assert {k: single["eigensolver"][k] for k in ("method", "block", "which")} == {
        "method": "lanczos", "block": 1, "which": "LA"}
    assert {k: block["eigensolver"][k] for k in ("method", "block", "which", "seed")} == {
        "method": "block_lanczos", "block": 3, "which": "LA", "seed": 7}
    assert single["eigensolver"]["steps"] >= 2 and block["eigensolver"]["steps"] >= 1
    assert block["most_negative"]["eigensolver"]["which"] == "SA"
    for out in (single, block):
        settings = out["settings"]
        assert "precision" not in settings and settings["weight_precision"] == "upcast"  # not the products'
        assert "loss" not in settings and settings["loss_closure"] is False and settings["loss_fn"] == "ce"
        assert "product_precision" not in out["eigensolver"]
    seeds = block["settings"]["seeds"]
    assert seeds == {"top": {"seed": 7, "rule": "seed"}, "most_negative": {"seed": 8, "rule": "seed + 1 (mod 2^64)"},
                     "trace": {"seed": 9, "rule": "seed + 2 (mod 2^64)"}}
    assert block["trace"]["settings"]["seed"] == seeds["trace"]["seed"]  # the seed the estimator used, explained
    assert block["settings"]["notes"] == ["precision tf32 changes nothing on cpu: TF32 is a CUDA matmul mode; "
                                          "the arithmetic stays strict float32"]
    assert "note: precision tf32 changes nothing on cpu" in notes and "note:" not in quiet
    assert "notes" not in single["settings"]


def test_derived_seeds_and_precision_notes() -> None:
    top = 2**64 - 2
    assert derived_seeds(top, ["density"]) == {"density": {"seed": offset_seed(top, 3), "rule": "seed + 3 (mod 2^64)"}}
    assert offset_seed(top, 3) == 1
    assert precision_note("strict", "cpu", "float32") is None and precision_note("tf32", "cuda:0", "float32") is None
    assert "float64" in str(precision_note("tf32", "cuda:0", "float64"))
    assert "cpu" in str(precision_note("tf32", "cpu", "float32"))


def test_table_labels_name_the_operator_and_bn_only_with_batchnorm() -> None:
    assert quantity_labels("hessian")["top"] == "λ_max (sharpness)"
    assert quantity_labels("ggn") == {"top": "λ_max (GGN)", "min": "λ_min (GGN)", "trace": "tr(GGN)"}
    assert quantity_labels("ef")["top"] == "λ_max (empirical Fisher)"
    assert not any("sharpness" in label for op in ("ggn", "ef") for label in quantity_labels(op).values())
    s = {"probe_examples": 10, "num_batches": 1, "dim": 1234, "bn": "eval", "hvp_mode": "rev-rev",
         "dtype": "float32", "device": "cpu", "seed": 0, "operator": "hessian"}
    assert "BN" not in settings_caption({**s, "has_batchnorm": False})
    assert "BN eval, HVP rev-rev" in settings_caption({**s, "has_batchnorm": True})
    assert "GGN products" in settings_caption({**s, "operator": "ggn", "has_batchnorm": False})
