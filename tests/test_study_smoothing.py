"""The smoothing study: its networks differ only in smoothness; the pairing option reaches the check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sharpscope.errors import ConfigError
from sharpscope.experiments.studies import run_study
from sharpscope.experiments.studies.smoothing import SCALES, network

pytestmark = pytest.mark.usefixtures("single_thread")


def test_the_two_networks_differ_only_in_activation_and_pooling() -> None:
    info = {"input_shape": [3, 32, 32]}
    relu, gelu = network("relu", "max")("cpu", info), network("gelu", "avg")("cpu", info)
    assert relu["kwargs"]["channels"] == list(SCALES["cpu"].channels) and relu["kwargs"]["norm"] == "gn"
    assert {k: v for k, v in relu["kwargs"].items() if k not in ("activation", "pool")} == \
        {k: v for k, v in gelu["kwargs"].items() if k not in ("activation", "pool")}
    assert (relu["kwargs"]["activation"], relu["kwargs"]["pool"]) == ("relu", "max")
    assert (gelu["kwargs"]["activation"], gelu["kwargs"]["pool"]) == ("gelu", "avg")
    assert network("gelu", "avg")("cpu", {"input_shape": [40]})["kwargs"]["activation"] == "gelu"


def test_independent_draws_as_an_option(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown smoothing study option"):
        run_study("smoothing", "smoke", tmp_path / "x", options={"pairs": 3})
    with pytest.raises(ConfigError, match="pairing must be one of"):
        run_study("smoothing", "smoke", tmp_path / "y", options={"pairing": "paired"})
    out = run_study("smoothing", "smoke", tmp_path, only=["fit-gelu-avgpool"], options={"pairing": "independent"})
    result = out.results["A5-gelu-avgpool"]
    sc = SCALES["smoke"]
    assert result["pairing"] == "independent" and result["gradients"] == 1 + len(sc.rhos) * sc.draws
    assert list(out.results) == ["A5-gelu-avgpool"] and out.data["pairing"] == "independent"
    assert json.loads((tmp_path / "fit-gelu-avgpool" / "identity.json").read_text())["settings"]["pairing"] == \
        "independent"
