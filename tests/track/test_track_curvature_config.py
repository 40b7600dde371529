"""A training config nests its curvature settings; run directories of format 0, with the settings flat,
still load, resume (only with the same settings) and plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sharpscope.curvature.settings import RUN_DEFAULTS
from sharpscope.errors import ConfigError
from sharpscope.io import checksums, jsonsafe
from sharpscope.io.jsonsafe import without_timings
from sharpscope.io.migrations import migrate_config, stamped
from sharpscope.losses import get_loss
from sharpscope.plots.runs import load_run
from sharpscope.plots.trajectory import sharpness_data
from sharpscope.track import RunDirectory, TrainConfig, build_data, build_tracker, config_differences, train

pytestmark = pytest.mark.usefixtures("single_thread")


def tiny() -> TrainConfig:
    return TrainConfig(model={"name": "mlp", "kwargs": {"in_features": 40, "num_classes": 10, "widths": [8],
                                                        "activation": "tanh"}},
                       data="mnist1d", n=32, physical_batch_size=16, steps=8, measure_every=2, checkpoint_every=3,
                       loss="mse", optimizer_kwargs={"lr": 0.5}, curvature=RUN_DEFAULTS.replace(k=2, tol=1e-4))


def old_layout(cfg: TrainConfig) -> dict[str, Any]:
    """``config.json`` of format 0 with the settings flat: eight curvature keys beside the others (no
    ``stop``, ``block_size`` or TF32 switch)."""
    out = {key: value for key, value in cfg.to_dict().items() if key != "curvature"}
    out.update({"k": 2, "tol": 1e-4, "max_iter": None, "trace_method": "hutch++", "trace_matvecs": 99, "bn": "eval",
                "hvp_mode": "rev-rev", "cache_graphs": cfg.curvature.cache_graphs})
    return out


def write_config(run: Path, config: dict[str, Any]) -> None:
    (run / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


class Crash(Exception):
    pass


def crash_at_5(step: int, total: int, record: dict | None) -> None:
    if step == 5:
        raise Crash


def test_a_flat_config_reads_as_the_nested_one_and_flat_names_still_override() -> None:
    cfg = tiny()
    stored = cfg.to_dict()
    assert stored["curvature"] == {**RUN_DEFAULTS.to_dict(), "k": 2, "tol": 1e-4} and "k" not in stored
    assert TrainConfig.from_dict(old_layout(cfg)) == cfg == TrainConfig.from_dict(stored)
    assert config_differences(migrate_config(old_layout(cfg)), stored) == []
    assert cfg.with_overrides({"k": 3}) == cfg.with_overrides({"curvature.k": 3})
    assert cfg.with_overrides({"k": 3}).curvature == RUN_DEFAULTS.replace(k=3, tol=1e-4)
    with pytest.raises(ConfigError, match="config gives k both at the top level and under 'curvature'"):
        TrainConfig.from_dict({**stored, "k": 2})
    with pytest.raises(ConfigError, match=r"unknown curvature setting\(s\) \['kay'\]"):
        cfg.with_overrides({"curvature.kay": 1})
    with pytest.raises(ConfigError, match="^k must be a positive integer, got 0$") as info:
        cfg.with_overrides({"k": 0})
    assert info.value.argument == "k"


def test_an_old_run_directory_resumes_to_the_uninterrupted_records_and_plots(tmp_path: Path) -> None:
    cfg = tiny()
    reference = train(cfg, tmp_path / "ref")
    with pytest.raises(Crash):
        train(cfg, tmp_path / "old", progress=crash_at_5)
    write_config(tmp_path / "old", old_layout(cfg))
    resumed = train(cfg, tmp_path / "old")
    assert resumed.resumed_from_step == 3
    assert without_timings(RunDirectory(tmp_path / "old").read_metrics()) == \
        without_timings(RunDirectory(tmp_path / "ref").read_metrics())
    assert without_timings(resumed.final) == without_timings(reference.final)
    assert json.loads((tmp_path / "old" / "config.json").read_text()) == stamped(cfg.to_dict())  # now the current format

    # a finished old run is recognised as finished, and reads and plots like a new one
    write_config(tmp_path / "ref", old_layout(cfg))
    checksums.record(tmp_path / "ref" / "config.json")
    assert train(cfg, tmp_path / "ref").already_complete is True
    assert TrainConfig.from_dict(load_run(tmp_path / "ref").config) == cfg
    old, new = ([{**run, "path": None} for run in jsonsafe.to_jsonable(
        sharpness_data([tmp_path / name], labels=["run"], k=2))["runs"]] for name in ("ref", "old"))
    assert old == new and old[0]["steps"] == [0, 2, 4, 6, 8]


def test_an_old_run_directory_refuses_other_curvature_settings(tmp_path: Path) -> None:
    cfg = tiny()
    with pytest.raises(Crash):
        train(cfg, tmp_path / "old", progress=crash_at_5)
    write_config(tmp_path / "old", old_layout(cfg))
    for changed, key in ((cfg.with_overrides({"k": 1}), "curvature.k"),
                         (cfg.with_overrides({"stop": "eigenvalue"}), "curvature.stop")):
        with pytest.raises(ConfigError, match=f"different configuration \\(differs in {key}\\)"):
            train(changed, tmp_path / "old")


def test_the_tracker_built_from_a_config_carries_its_settings() -> None:
    cfg = tiny().with_overrides({"probe_seed": 9, "trace": True, "curvature.stop": "eigenvalue"})
    train_set, _ = build_data(cfg)
    tracker = build_tracker(cfg, train_set, None, get_loss("mse"))
    assert tracker.curvature is cfg.curvature and tracker.curvature.stop == "eigenvalue"
    assert (tracker.seed, tracker.trace, tracker.every, tracker.batch_size) == (9, True, 2, 16)
    assert build_tracker(cfg.with_overrides({"probe_seed": None, "seed": 4}), train_set, None,
                         get_loss("mse")).seed == 4


def test_the_tf32_switch_of_format_0_reads_as_the_tf32_precision() -> None:
    cfg = tiny()
    assert TrainConfig.from_dict({**old_layout(cfg), "allow_tf32": True}).curvature.precision == "tf32"
    assert TrainConfig.from_dict({**old_layout(cfg), "allow_tf32": False}) == cfg
