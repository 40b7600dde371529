"""A bad optimizer option fails in one line naming ``optimizer_kwargs.KEY`` before any data or model loads:
the data set named here does not exist, so reaching the data would fail with another message."""

from __future__ import annotations

from pathlib import Path

import pytest

from sharpscope.errors import ConfigError
from sharpscope.track import TrainConfig, train
from sharpscope.track.build import check_optimizer_options


def config(tmp_path: Path, optimizer: str, **kwargs: object) -> TrainConfig:
    return TrainConfig(model={"name": "mlp", "kwargs": {"in_features": 4, "widths": [3], "out_features": 2}},
                       data=f"npz:{tmp_path / 'missing.npz'}", optimizer=optimizer, steps=1,
                       optimizer_kwargs={"lr": 0.1, **kwargs})


@pytest.mark.parametrize(("optimizer", "kwargs", "key"), [
    ("sam", {"rho": -1.0}, "optimizer_kwargs.rho"),
    ("sam", {"rho": 0.05, "base": "lion"}, "optimizer_kwargs.base"),
    ("sgd", {"momentum": -0.5}, "optimizer_kwargs"),
    ("rs", {"rho": -2.0, "eps0": 1e-3}, "optimizer_kwargs.rho"),
])
def test_a_bad_option_fails_before_the_data_loads(tmp_path: Path, optimizer: str, kwargs: dict[str, object],
                                                   key: str) -> None:
    cfg = config(tmp_path, optimizer, **kwargs)
    with pytest.raises(ConfigError) as caught:
        train(cfg, tmp_path / "run")
    assert caught.value.argument == key
    assert "missing.npz" not in str(caught.value)
    assert len(str(caught.value).splitlines()) == 1


def test_good_options_pass_the_early_check(tmp_path: Path) -> None:
    for optimizer, kwargs in (("sam", {"rho": 0.05, "base": "adam"}), ("sparse-sam", {"rho": 0.05}),
                              ("sa", {"rho": 0.01, "eps0": 1e-3}), ("adamw", {"weight_decay": 0.1}), ("gd", {})):
        check_optimizer_options(config(tmp_path, optimizer, **kwargs))
