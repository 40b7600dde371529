"""``TrainConfig.init_from``: a run starts from another run's (or a checkpoint file's) weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from sharpscope.errors import CheckpointError, ConfigError
from sharpscope.io import save_checkpoint
from sharpscope.models import ModelSpec
from sharpscope.track import RunDirectory, TrainConfig, build_model, train

pytestmark = pytest.mark.usefixtures("single_thread")


def tiny(**overrides: Any) -> TrainConfig:
    base = TrainConfig(model={"name": "mlp", "kwargs": {"in_features": 40, "num_classes": 10, "widths": [8],
                                                         "activation": "tanh"}},
                       data="mnist1d", n=32, steps=3, measure_every=1, checkpoint_every=10, loss="mse",
                       optimizer_kwargs={"lr": 0.3}, dtype="float64")
    return base.with_overrides(overrides)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    raw = RunDirectory(path).load_checkpoint()
    assert raw is not None
    return raw.state_dict


def test_a_run_continues_from_another_runs_latest_weights(tmp_path: Path) -> None:
    """Three steps, then three more from that run's directory, equal six uninterrupted steps."""
    first = train(tiny(), tmp_path / "a")
    second = train(tiny(init_from=str(tmp_path / "a")), tmp_path / "b")
    straight = train(tiny(steps=6), tmp_path / "c")
    wb, wc = _weights(tmp_path / "b"), _weights(tmp_path / "c")
    assert wb.keys() == wc.keys() and all(torch.allclose(wb[k], wc[k], rtol=1e-12, atol=1e-15) for k in wb)
    assert second.init == {"path": first.checkpoint, "step": 3}
    records_b = RunDirectory(tmp_path / "b").read_metrics()
    records_c = RunDirectory(tmp_path / "c").read_metrics()
    assert records_b[0]["train_loss"] == pytest.approx(records_c[3]["train_loss"], rel=1e-12)
    assert straight.init is None
    assert RunDirectory(tmp_path / "b").read_config()["init_from"] == str(tmp_path / "a")


def test_a_checkpoint_file_is_loaded_and_recorded(tmp_path: Path) -> None:
    cfg = tiny(steps=0)
    model, spec = build_model(cfg.with_overrides({"seed": 7}), torch.device("cpu"), torch.float64)
    path = save_checkpoint(tmp_path / "w.safetensors", model, spec=spec)
    summary = train(cfg.with_overrides({"init_from": str(path)}), tmp_path / "run")
    got = _weights(tmp_path / "run")
    assert all(torch.equal(got[k], v) for k, v in model.state_dict().items())
    assert summary.init == {"path": str(Path(path).resolve()), "step": None}


def test_bad_sources_are_refused_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such checkpoint file or run directory"):
        train(tiny(init_from=str(tmp_path / "missing")), tmp_path / "r1")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="holds no run checkpoint"):
        train(tiny(init_from=str(tmp_path / "empty")), tmp_path / "r2")
    other = ModelSpec.from_dict({"name": "mlp", "kwargs": {"in_features": 40, "num_classes": 10, "widths": [4],
                                                           "activation": "tanh"}})
    save_checkpoint(tmp_path / "other.safetensors", other.build(), spec=other)
    with pytest.raises(CheckpointError, match="differs from the config"):
        train(tiny(init_from=str(tmp_path / "other.safetensors")), tmp_path / "r3")
    with pytest.raises(ConfigError, match="init_from must be"):
        tiny(init_from="")
