"""``keep_checkpoints``: every checkpoint stays (the iterates of a landscape path), resume uses the latest."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from sharpscope.errors import ConfigError
from sharpscope.experiments.studies import finished_summary
from sharpscope.io import read_checkpoint
from sharpscope.io.jsonsafe import without_timings
from sharpscope.track import RunDirectory, TrainConfig, train

pytestmark = pytest.mark.usefixtures("single_thread")


class Crash(Exception):
    pass


def tiny(**overrides: Any) -> TrainConfig:
    """A 40-16-10 MLP on 64 MNIST-1D examples, mini-batches of 16, checkpoints at 0, 4, 8, 12."""
    base = TrainConfig(model={"name": "mlp", "kwargs": {"in_features": 40, "num_classes": 10, "widths": [16],
                                                         "activation": "tanh"}},
                       data="mnist1d", n=64, loss="ce", optimizer="sgd", optimizer_kwargs={"lr": 0.1, "momentum": 0.9},
                       batch_size=16, steps=12, measure_every=6, checkpoint_every=4)
    return base.with_overrides(overrides)


def steps_of(run: Path) -> list[int]:
    return [step for step, _ in RunDirectory(run).checkpoints()]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(path).state_dict


def test_every_checkpoint_is_kept_only_when_asked_and_the_numbers_do_not_change(tmp_path: Path) -> None:
    latest_only = train(tiny(), tmp_path / "latest")
    kept = train(tiny(keep_checkpoints=True), tmp_path / "kept")
    assert steps_of(tmp_path / "latest") == [12]
    assert steps_of(tmp_path / "kept") == [0, 4, 8, 12]
    assert without_timings(kept.final) == without_timings(latest_only.final)
    short = train(tiny(steps=4), tmp_path / "short")  # a 4-step run ends where the kept step-4 checkpoint is
    assert short.step == 4
    four = dict(RunDirectory(tmp_path / "kept").checkpoints())[4]
    end = RunDirectory(tmp_path / "short").latest_checkpoint()[1]
    a, b = weights(four), weights(end)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_crashed_run_with_kept_checkpoints_resumes_from_the_latest(tmp_path: Path) -> None:
    cfg = tiny(keep_checkpoints=True)
    reference = train(cfg, tmp_path / "ref")

    def crash_at_7(step: int, total: int, record: dict | None) -> None:
        if step == 7:
            raise Crash

    with pytest.raises(Crash):
        train(cfg, tmp_path / "run", progress=crash_at_7)
    assert steps_of(tmp_path / "run") == [0, 4]
    resumed = train(cfg, tmp_path / "run")
    assert resumed.resumed_from_step == 4 and resumed.status == "completed"
    assert steps_of(tmp_path / "run") == [0, 4, 8, 12]
    assert without_timings(RunDirectory(tmp_path / "run").read_metrics()) == \
        without_timings(RunDirectory(tmp_path / "ref").read_metrics())
    assert without_timings(resumed.final) == without_timings(reference.final)


def test_keep_checkpoints_must_be_a_bool() -> None:
    with pytest.raises(ConfigError, match="keep_checkpoints must be true or false"):
        tiny(keep_checkpoints="yes")
    assert TrainConfig.from_dict(tiny(keep_checkpoints=True).to_dict()).keep_checkpoints is True


def test_a_finished_run_from_before_the_field_is_still_reused_by_studies(tmp_path: Path) -> None:
    cfg = tiny(steps=2)
    train(cfg, tmp_path / "run")
    stored = json.loads((tmp_path / "run" / "config.json").read_text())
    del stored["keep_checkpoints"]  # as written before the field existed
    (tmp_path / "run" / "config.json").write_text(json.dumps(stored))
    assert finished_summary(tmp_path / "run", cfg) is not None
    assert finished_summary(tmp_path / "run", tiny(steps=2, keep_checkpoints=True)) is None
