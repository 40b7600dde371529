"""The run-directory format version: written in every new run, older formats migrated on load to the
config a new run has, a newer format refused in one line; every summary committed in the repository loads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from sharpscope.curvature.settings import RUN_DEFAULTS
from sharpscope.errors import ConfigError
from sharpscope.experiments.rejudge import REJUDGE
from sharpscope.experiments.report import study_report
from sharpscope.io.migrations import (
    FORMAT_VERSION,
    MASKS_KEY,
    SCORED_KEY,
    VERSION_KEY,
    format_version,
    migrate_config,
    with_added_fields,
    with_scored_flag,
)
from sharpscope.io.studysummary import read_study_summary
from sharpscope.track import RunDirectory, TrainConfig, train

REPO = Path(__file__).resolve().parents[2]
SUMMARIES = sorted((REPO / "figures").glob("*-summary.json"))


def tiny() -> TrainConfig:
    return TrainConfig(model={"name": "mlp", "kwargs": {"in_features": 40, "num_classes": 10, "widths": [4],
                                                        "activation": "tanh"}},
                       data="mnist1d", n=16, physical_batch_size=16, steps=2, measure_every=2, checkpoint_every=2,
                       optimizer_kwargs={"lr": 0.1}, curvature=RUN_DEFAULTS.replace(k=2, tol=1e-3, max_iter=10,
                                                                                      precision="tf32",
                                                                                      cache_graphs=False))


def version_0(cfg: TrainConfig) -> dict[str, Any]:
    """``config.json`` of format 0: no version, curvature settings flat (only some of them), TF32 as a flag."""
    out = {key: value for key, value in cfg.to_dict().items() if key != "curvature"}
    out.update({"k": 2, "tol": 1e-3, "max_iter": 10, "allow_tf32": True})
    return out


def stored(run: Path) -> dict[str, Any]:
    return json.loads((run / "config.json").read_text())


def test_a_new_run_directory_carries_the_current_format_version(tmp_path: Path) -> None:
    train(tiny(), tmp_path / "run")
    raw = stored(tmp_path / "run")
    assert raw[VERSION_KEY] == FORMAT_VERSION == format_version(raw)
    assert RunDirectory(tmp_path / "run").read_config() == tiny().to_dict()  # the version is the directory's


def test_a_version_0_directory_reads_as_the_config_of_a_new_one(tmp_path: Path) -> None:
    cfg = tiny()
    new, old = RunDirectory(tmp_path / "new"), RunDirectory(tmp_path / "old")
    new.create(cfg.to_dict())
    old.path.mkdir()
    (old.path / "config.json").write_text(json.dumps(version_0(cfg)))
    assert format_version(stored(old.path)) == 0
    assert old.read_config() == new.read_config() == cfg.to_dict()
    assert TrainConfig.from_dict(stored(old.path)) == cfg == TrainConfig.from_dict(stored(new.path))
    assert old.create(cfg.to_dict()) == "resume"  # the same run; its config is now written in the current format
    assert stored(old.path) == stored(new.path)


def test_version_0_takes_the_settings_its_runs_used_and_names_only_current_ones() -> None:
    from sharpscope.curvature.settings import CurvatureSettings
    from sharpscope.io.migrations import CURVATURE_V0

    assert CurvatureSettings.from_dict(CURVATURE_V0) == RUN_DEFAULTS.replace(cache_graphs=False)
    assert migrate_config({"model": {"name": "mlp"}})["curvature"]["cache_graphs"] is False  # no graph cache then


def test_each_migration_is_needed_and_a_twice_given_key_is_refused() -> None:
    cfg = tiny()
    assert migrate_config({**version_0(cfg), "allow_tf32": False})["curvature"]["precision"] == "strict"
    assert migrate_config({"k": 3}) == {"k": 3}  # not a train config: nothing to move
    with pytest.raises(ConfigError, match="^config gives k both at the top level and under 'curvature'$"):
        migrate_config({**cfg.to_dict(), "k": 2})
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) \['k'\]"):  # the current format has no flat keys
        TrainConfig.from_dict({**cfg.to_dict(), "k": 2, VERSION_KEY: FORMAT_VERSION})


def test_a_field_added_since_a_config_takes_its_default_and_a_given_one_is_kept() -> None:
    old = {"steps": 5, "optimizer_kwargs": {"lr": 0.1}}
    defaults = {"steps": 10, "keep_checkpoints": False, "optimizer_kwargs": {"lr": 0.5, "momentum": 0.9}}
    assert with_added_fields(old, defaults) == {"steps": 5, "optimizer_kwargs": {"lr": 0.1}, "keep_checkpoints": False}
    assert old == {"steps": 5, "optimizer_kwargs": {"lr": 0.1}}  # not changed in place
    assert with_added_fields(old, {}) == old


def test_a_sparse_state_without_the_scored_flag_was_scored_iff_a_mask_has_a_nonzero_entry() -> None:
    zeros = [torch.zeros(3, dtype=torch.bool), torch.zeros(2, 2)]
    one = [torch.zeros(3, dtype=torch.bool), torch.tensor([[0.0, 0.0], [1.0, 0.0]])]
    assert with_scored_flag({MASKS_KEY: zeros, "num_steps": 4}) == {MASKS_KEY: zeros, "num_steps": 4, SCORED_KEY: False}
    assert with_scored_flag({MASKS_KEY: one})[SCORED_KEY] is True
    assert with_scored_flag({MASKS_KEY: zeros, SCORED_KEY: True})[SCORED_KEY] is True  # a saved flag is kept
    assert with_scored_flag({"num_steps": 4}) == {"num_steps": 4}  # no masks: nothing to infer
    state = {MASKS_KEY: one}
    with_scored_flag(state)
    assert state == {MASKS_KEY: one}  # not changed in place


@pytest.mark.parametrize("version", [FORMAT_VERSION + 1, -1, "1", True])
def test_an_unknown_version_is_refused_in_one_line(tmp_path: Path, version: Any) -> None:
    run = tmp_path / "run"
    train(tiny(), run)
    (run / "config.json").write_text(json.dumps({**stored(run), VERSION_KEY: version}))
    for load in (RunDirectory(run).read_config, lambda: train(tiny(), run)):
        with pytest.raises(ConfigError) as info:
            load()
        message = str(info.value)
        assert "\n" not in message and message.startswith(f"{run / 'config.json'}: ")
        if version == FORMAT_VERSION + 1:
            assert f"run directory format {version} is newer than this sharpscope reads (up to {FORMAT_VERSION})" in message


@pytest.mark.parametrize("path", SUMMARIES, ids=[p.name for p in SUMMARIES])
def test_every_committed_study_summary_loads(path: Path) -> None:
    summary = read_study_summary(path)
    assert summary.study == path.name.removesuffix("-summary.json") and summary.stages
    assert all(stage.status for stage in summary.stages.values())
    assert study_report(summary).startswith(f"### {summary.study} ")
    if summary.study in REJUDGE:
        assert REJUDGE[summary.study](summary)


def test_the_repository_holds_summaries_to_load() -> None:
    assert len(SUMMARIES) >= 6
