"""Experiment recipes: the papers' set-ups as :class:`~sharpscope.track.TrainConfig` factories.

``RECIPES[name](scale)`` returns a config; ``scale`` is ``"smoke"`` (seconds on a laptop CPU,
plumbing only: no phenomenon is expected), ``"cpu"`` (minutes on a CPU, a small version of the
experiment) or ``"gpu"`` (the paper's setting, or close to it). Every field can be overridden
(:func:`get_recipe` ``overrides``, CLI ``--set key=value``; dotted keys reach into dicts, e.g.
``optimizer_kwargs.lr=0.02`` or ``model.kwargs.widths=[100,100]``).

Recipes (SCIENCE.md sections in brackets):

* ``eos-gd`` [5.2, check E1] — Cohen et al.: fully connected tanh net (2×200, biases), MSE
  ``½‖f−e_y‖²`` summed over classes, full-batch GD, sharpness = λ_max of the same objective,
  threshold ``2/η``. cpu/gpu: the first 5 000 CIFAR-10 images (``cifar10-5k``), flattened, each
  feature standardised (statistics of the *training file*: 16 000 images for the shared
  ``cifar10_train16k.npz``, not the 50 000 of the paper), when the file is found at
  ``../shared/data`` (from the working directory or the repository); otherwise MNIST-1D.
  gpu uses the paper's ``η = 0.01`` (2/η = 200); cpu uses ``η = 0.02`` (2/η = 100, just above the
  initial λ_max ≈ 78 measured for this net and data at seed 0) so the edge is reached in fewer
  steps — a starting point to tune. Both stop at 99% training accuracy.
* ``eos-momentum`` [5.3, check E2] — the same with Polyak momentum β = 0.9 (PyTorch form);
  threshold ``(2+2β)/η = 3.8/η``.
* ``sam-edge`` [4, check E5] — Long & Bartlett: ReLU MLP with Glorot-normal init, MSE averaged
  over outputs and examples (``mse-mean``), full-batch SAM (ρ = 0.1, normalised, over GD) on
  MNIST-1D; threshold SAM-edge(η, ρ, ‖g‖) with the full-batch ‖g‖ of each measurement.
* ``demo`` — mini-batch SGD with momentum and cross entropy on MNIST-1D, with trace estimates.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from sharpscope.errors import ConfigError
from sharpscope.track.config import TrainConfig

SCALES = ("smoke", "cpu", "gpu")
_REPO = Path(__file__).resolve().parents[2]


def shared_data_file(name: str) -> Path | None:
    """``../shared/data/<name>`` relative to the working directory or the repository, if it exists."""
    for base in (Path.cwd() / ".." / "shared" / "data", _REPO / ".." / "shared" / "data"):
        path = base / name
        if path.is_file():
            return path.resolve()
    return None


def _fc(in_features: int, widths: list[int], activation: str, init: str = "torch") -> dict[str, Any]:
    kwargs: dict[str, Any] = {"in_features": in_features, "num_classes": 10, "widths": widths,
                              "activation": activation}
    if init != "torch":
        kwargs["init"] = init
    return {"name": "mlp", "kwargs": kwargs}


def _mnist1d(n: int | None, test_n: int) -> dict[str, Any]:
    return {"data": "mnist1d", "n": n, "test_data": "mnist1d", "test_n": test_n}


def _cifar5k() -> dict[str, Any] | None:
    train = shared_data_file("cifar10_train16k.npz")
    if train is None:
        return None
    out: dict[str, Any] = {"data": f"cifar10:{train}", "n": 5000,
                           "data_options": {"standardize": "feature", "flatten": True}}
    test = shared_data_file("cifar10_test2k.npz")
    if test is not None:
        out.update(test_data=f"cifar10:{test}", test_n=None,
                   test_data_options={"standardize": "feature", "flatten": True, "feature_stats": "train"})
    return out


def _check_scale(scale: str) -> None:
    if scale not in SCALES:
        raise ConfigError(f"unknown scale {scale!r}; valid: {', '.join(SCALES)}")


def eos_gd(scale: str, *, optimizer: str = "gd", momentum: float | None = None) -> TrainConfig:
    """Cohen et al. fc-tanh / MSE / full-batch GD (see the module docstring)."""
    _check_scale(scale)
    kw: dict[str, Any] = {}
    if momentum is not None:
        kw["momentum"] = momentum
    if scale == "smoke":
        return TrainConfig(model=_fc(40, [200, 200], "tanh"), **_mnist1d(256, 200), loss="mse",
                           optimizer=optimizer, optimizer_kwargs={"lr": 0.01, **kw}, physical_batch_size=128,
                           steps=60, measure_every=5, k=2, trace=True, trace_method="hutchinson",
                           trace_matvecs=8, checkpoint_every=10, cache_graphs=True)
    data = _cifar5k()
    in_features = 3072 if data is not None else 40
    data = data or _mnist1d(None, 1000)
    if scale == "cpu":
        return TrainConfig(model=_fc(in_features, [200, 200], "tanh"), **data, loss="mse", optimizer=optimizer,
                           optimizer_kwargs={"lr": 0.02, **kw}, physical_batch_size=1000, steps=2000,
                           stop_at_train_acc=0.99, measure_every=20, k=2, checkpoint_every=100,
                           cache_graphs=True)
    return TrainConfig(model=_fc(in_features, [200, 200], "tanh"), **data, loss="mse", optimizer=optimizer,
                       optimizer_kwargs={"lr": 0.01, **kw}, physical_batch_size=1000, steps=20000,
                       stop_at_train_acc=0.99, measure_every=50, k=2, trace=True, checkpoint_every=500,
                       hvp_mode="fwd-rev", device="auto")


def eos_momentum(scale: str) -> TrainConfig:
    """:func:`eos_gd` with Polyak momentum β = 0.9 (threshold 3.8/η)."""
    return eos_gd(scale, optimizer="sgd", momentum=0.9)


def sam_edge(scale: str) -> TrainConfig:
    """Long & Bartlett full-batch SAM on MNIST-1D (see the module docstring)."""
    _check_scale(scale)
    opt = {"lr": 0.05, "rho": 0.1}
    if scale == "smoke":
        return TrainConfig(model=_fc(40, [64, 64], "relu", "glorot_normal"), **_mnist1d(256, 200), loss="mse-mean",
                           optimizer="sam", optimizer_kwargs=opt, physical_batch_size=128, steps=40,
                           measure_every=5, k=1, checkpoint_every=10, cache_graphs=True)
    if scale == "cpu":
        return TrainConfig(model=_fc(40, [256, 256, 256], "relu", "glorot_normal"), **_mnist1d(None, 1000),
                           loss="mse-mean", optimizer="sam", optimizer_kwargs=opt, physical_batch_size=1000,
                           steps=3000, measure_every=25, k=1, checkpoint_every=250, cache_graphs=True)
    return TrainConfig(model=_fc(40, [1000] * 4, "relu", "glorot_normal"), **_mnist1d(None, 1000), loss="mse-mean",
                       optimizer="sam", optimizer_kwargs={"lr": 0.01, "rho": 0.1}, physical_batch_size=4000,
                       steps=20000, measure_every=50, k=1, checkpoint_every=1000, hvp_mode="fwd-rev", device="auto")


def demo(scale: str) -> TrainConfig:
    """Mini-batch SGD + momentum, cross entropy, MNIST-1D, with trace estimates."""
    _check_scale(scale)
    steps, every = {"smoke": (60, 20), "cpu": (2000, 100), "gpu": (5000, 100)}[scale]
    return TrainConfig(model=_fc(40, [100, 100], "relu"), **_mnist1d(None, 1000), loss="ce", optimizer="sgd",
                       optimizer_kwargs={"lr": 0.05, "momentum": 0.9}, batch_size=128, steps=steps,
                       measure_every=every, k=1, trace=True, trace_matvecs=30, checkpoint_every=every,
                       device="cpu" if scale != "gpu" else "auto")


RECIPES: dict[str, Callable[[str], TrainConfig]] = {
    "eos-gd": eos_gd,
    "eos-momentum": eos_momentum,
    "sam-edge": sam_edge,
    "demo": demo,
}


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``["optimizer_kwargs.lr=0.02", "data=mnist1d"]`` → ``{"optimizer_kwargs.lr": 0.02, "data": "mnist1d"}``.

    Values are parsed as JSON when possible (numbers, ``true``, ``null``, lists, objects), else
    kept as strings.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        out[key] = value
    return out


def get_recipe(name: str, scale: str = "smoke", overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """The recipe ``name`` at ``scale`` with ``overrides`` applied (``recipe``/``scale`` recorded)."""
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; valid: {', '.join(RECIPES)}")
    _check_scale(scale)
    cfg = RECIPES[name](scale)
    cfg.recipe, cfg.scale = name, scale
    cfg.validate()
    return cfg.with_overrides(overrides) if overrides else cfg


__all__ = ["RECIPES", "SCALES", "demo", "eos_gd", "eos_momentum", "get_recipe", "parse_overrides", "sam_edge",
           "shared_data_file"]
