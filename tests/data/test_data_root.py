"""The data root: one setting, read in one place; a missing file stops a recipe in one line or is a
fallback a study states and records."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sharpscope.data.root import (
    CIFAR10_TRAIN,
    DATA_ROOT_ENV,
    MNIST_5K,
    DataFallbackWarning,
    MissingDataError,
    data_file,
    data_root,
    fallback_notes,
)
from sharpscope.errors import ConfigError
from sharpscope.experiments import get_recipe
from sharpscope.experiments.studies import STUDIES, study_stages
from sharpscope.experiments.studies.framework import Study, data_fallbacks, recipe_stage, run


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty data root."""
    folder = tmp_path / "data"
    folder.mkdir()
    monkeypatch.setenv(DATA_ROOT_ENV, str(folder))
    return folder


def test_the_root_is_the_setting_and_nothing_else(root: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert data_root() == root.resolve() and data_file(CIFAR10_TRAIN) is None
    (root / CIFAR10_TRAIN).write_bytes(b"")
    assert data_file(CIFAR10_TRAIN) == root.resolve() / CIFAR10_TRAIN
    monkeypatch.delenv(DATA_ROOT_ENV)
    monkeypatch.chdir(tmp_path / "data")  # a file in the working directory or beside it is not looked at
    assert data_root() is None and data_file(CIFAR10_TRAIN) is None
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match=rf"^the data root \${DATA_ROOT_ENV}=.*nowhere is not a folder$"):
        data_root()


def test_a_recipe_that_needs_a_file_names_it_and_the_setting(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(MissingDataError, match=rf"^eos-cifar5k needs {CIFAR10_TRAIN} under the data root "
                                               rf"{root.resolve()} \(\${DATA_ROOT_ENV}\)$"):
        get_recipe("eos-cifar5k", "smoke")
    monkeypatch.delenv(DATA_ROOT_ENV)
    with pytest.raises(MissingDataError, match=rf"^sam-edge-cnn needs {CIFAR10_TRAIN} or {MNIST_5K} under the data "
                                               rf"root \(none set: set \${DATA_ROOT_ENV} or pass --data-root\)$"):
        get_recipe("sam-edge-cnn", "smoke")


def test_a_recipe_with_a_fallback_records_the_data_it_uses(root: Path) -> None:
    assert get_recipe("eos-gd", "gpu").data == "mnist1d"
    (root / CIFAR10_TRAIN).write_bytes(b"")  # found by name; read only when the run builds its data
    assert get_recipe("eos-gd", "gpu").data == f"cifar10:{root.resolve() / CIFAR10_TRAIN}"


def test_a_study_states_what_it_does_without_a_file(root: Path) -> None:
    names = [s.name for s in study_stages("eos", "cpu")]
    assert not any(n.startswith("cifar5k") for n in names)
    assert data_fallbacks(STUDIES["eos"], "cpu") == [
        f"{CIFAR10_TRAIN} not found under the data root {root.resolve()} (${DATA_ROOT_ENV}): the cifar5k stages "
        "are left out"]
    (root / CIFAR10_TRAIN).write_bytes(b"")
    assert [s.name for s in study_stages("eos", "cpu")][-2:] == ["cifar5k-lr0.02", "cifar5k-lr0.01"]
    assert data_fallbacks(STUDIES["eos"], "cpu") == []
    assert fallback_notes({MNIST_5K: "x"}) == [f"{MNIST_5K} not found under the data root {root.resolve()} "
                                               f"(${DATA_ROOT_ENV}): x"]


def test_a_study_run_warns_with_its_fallback_and_records_it(root: Path, tmp_path: Path) -> None:
    stage = recipe_stage("demo", lambda scale: get_recipe("demo", scale), {"steps": 1, "measure_every": 1})
    study = Study("tiny", (), lambda _: [stage], lambda _: {}, without_data=lambda _: {MNIST_5K: "MNIST-1D used"})
    line = data_fallbacks(study, "smoke")[0]
    with pytest.warns(DataFallbackWarning, match=f"^{re.escape(f'study tiny: {line}')}$"):
        summary = run(study, "smoke", tmp_path / "out")
    assert summary.data_root == {"root": str(root.resolve()), "fallbacks": [line]}
    stored = json.loads((tmp_path / "out" / "tiny-summary.json").read_text())
    assert stored["data_root"] == summary.data_root


def test_the_command_line_sets_the_root_states_fallbacks_and_refuses_a_missing_folder(root: Path, tmp_path: Path,
                                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from sharpscope_cli.main import app

    monkeypatch.delenv(DATA_ROOT_ENV)  # the option sets it
    result = CliRunner().invoke(app, ["reproduce", "eos", "--out", str(tmp_path / "o"),
                                      "--data-root", str(tmp_path / "nowhere")])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1].endswith("nowhere is not a folder")
    result = CliRunner().invoke(app, ["reproduce", "eos", "--out", str(tmp_path / "o"), "--only", "gd-lr0.01",
                                      "--data-root", str(root)])
    assert result.exit_code == 0, result.output
    assert f"note: {CIFAR10_TRAIN} not found under the data root {root.resolve()}" in result.output
