"""Single-run recipes: the papers' set-ups as :class:`~sharpscope.track.TrainConfig` factories.

``RECIPES[name](scale)`` returns a config; ``scale`` is ``"smoke"`` (seconds on a laptop CPU,
plumbing only: no phenomenon is expected), ``"cpu"`` (minutes on 2 CPU cores, a small version of
the experiment whose effect was checked here) or ``"gpu"`` (the paper's setting, or close to it).
Data files come from the data root (:mod:`sharpscope.data.root`, ``$SHARPSCOPE_DATA``): a recipe
that cannot run without one raises :class:`~sharpscope.data.root.MissingDataError`, one that can uses the
fallback its entry below states, and its config records the data it uses. Every field can be overridden (:func:`get_recipe` ``overrides``, CLI ``--set key=value``; dotted
keys reach into dicts, e.g. ``optimizer_kwargs.lr=0.02`` or ``model.kwargs.widths=[100,100]``).

Recipes:

* ``eos-gd`` — Cohen et al.: fully connected tanh net, MSE ``½‖f−e_y‖²`` summed over
  classes, full-batch GD, sharpness = λ_max of the same objective, threshold ``2/η``.
  gpu: the first 5 000 CIFAR-10 images (``cifar10-5k``, flattened, per-feature standardised with
  the training file's statistics) when ``cifar10_train16k.npz`` is under the data root (else
  MNIST-1D), 200-200 net, the paper's ``η = 0.01``, stop at 99% train accuracy. cpu: the setting
  of ``tests/science/test_science_eos.py`` (tanh 40→100→100→10 on the first 1 000 MNIST-1D
  examples, ``η = 0.2``, 800 steps, λ every 10 steps): CIFAR-5k full batch is ``eos-cifar5k``.
* ``eos-cifar5k`` (E1 on the paper's data) — ``eos-gd`` on the first 5 000 CIFAR-10 images at
  ``η = 2/100`` on CPU (see :func:`eos_cifar5k`).
* ``eos-momentum`` — the same with Polyak momentum β = 0.9 (PyTorch form), threshold
  ``(2+2β)/η = 3.8/η``; cpu: 500 examples, 600 steps (the test's setting).
* ``eos-ce`` — ``eos-gd`` with cross entropy.
* ``eos-adam`` — ``eos-gd`` with full-batch Adam (β = (0.9, 0.999), ε = 1e-8), measuring the
  preconditioned sharpness λ_max(P⁻¹H), ``P = diag(√v̂ + ε)`` (``preconditioned``), against
  ``38/η``; cpu: ``η = 1e-3``, 700 steps, λ every 15 steps (the setting of the E4 test); gpu
  (``η = 1e-4``) not checked here.
* ``sam-edge`` — Long & Bartlett: ReLU MLP (depth 4), MSE averaged over outputs and
  examples (``mse-mean``), full-batch SAM (normalised, over GD); threshold SAM-edge(η, ρ, ‖g‖)
  with the full-batch ‖g‖ of each measurement. cpu: width 100 on the first 1 000 MNIST images
  (``mnist5k.npz`` under the data root, class-balanced; MNIST-1D if absent), ``η = 0.4`` (λ_max ≈ 3.5 at
  init, so η = 1 starts above 2/η), ρ = 0.1 (ρ = 0 is the GD control; the ``sam-edge`` study sweeps ρ).
* ``sam-edge-cnn`` — the same with conv-ReLU-LayerNorm-maxpool ×2 on CIFAR-10 images (cpu: the
  first 250, channels 8/16, η = 0.004 calibrated on those images: λ_max ≈ 260 at init, 2/η = 500;
  ``smooth=True`` swaps in GELU and average pooling, η = 0.015 for the same ratio).
* ``sam-minibatch`` — mini-batch SAM (batch 128) on the smooth CNN, recording the step's batch
  sharpness and gradient norm beside the probe-set ones (the mini-batch SAM-edge).
* ``sam-flatness`` — mini-batch SGD (ρ = 0) on a BatchNorm-free ReLU MLP, cross entropy,
  λ_1..λ_5 measured along the run; the ``sam-flatness`` study runs it with SAM and Sparse SAM too.
* ``demo`` — mini-batch SGD with momentum and cross entropy on MNIST-1D, with trace estimates.
* ``landscape-resnet18`` — the run behind the ResNet-18 loss-landscape figures: CIFAR
  ResNet-18 with BatchNorm, mini-batch SGD (batch 128, momentum 0.9) with cross entropy on the first
  2 000 CIFAR-10 images (MNIST-1D cannot feed it: needs ``cifar10_train16k.npz``),
  every checkpoint kept (``keep_checkpoints``) as the iterates whose PCA directions span the slice
  and whose path is drawn on it; λ_max sparse. cpu: width 8, 300 steps, a checkpoint every 20;
  gpu: width 64, 5 000 images, 3 000 steps.

The multi-stage set-ups (the escape from a bad minimum, label-noise SGD, sweeps) are studies:
:mod:`sharpscope.experiments.studies`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from sharpscope.curvature.settings import RUN_DEFAULTS
from sharpscope.data.root import CIFAR10_TEST, CIFAR10_TRAIN, MNIST_5K, data_file, missing_data
from sharpscope.errors import ConfigError
from sharpscope.track.config import TrainConfig
from sharpscope.validation import MAX_DEPTH, check_depth

SCALES = ("smoke", "cpu", "gpu")


def fc(in_features: int, widths: list[int], activation: str, init: str = "torch") -> dict[str, Any]:
    """The spec of a fully connected net with 10 outputs."""
    kwargs: dict[str, Any] = {"in_features": in_features, "num_classes": 10, "widths": widths,
                              "activation": activation}
    if init != "torch":
        kwargs["init"] = init
    return {"name": "mlp", "kwargs": kwargs}


def mnist1d_data(n: int | None, test_n: int | None) -> dict[str, Any]:
    """Config fields for the first ``n`` MNIST-1D training examples (and ``test_n`` test examples)."""
    out: dict[str, Any] = {"data": "mnist1d", "n": n}
    if test_n is not None:
        out.update(test_data="mnist1d", test_n=test_n)
    return out


def cifar_data(n: int, flatten: bool) -> dict[str, Any] | None:
    """Config fields for the first ``n`` images of the shared CIFAR-10 training subset (flattened with
    per-feature standardisation, or images with per-channel), with the 2 000-image test set when present;
    None without the files."""
    train = data_file(CIFAR10_TRAIN)
    if train is None:
        return None
    standardize = "feature" if flatten else "channel"
    out: dict[str, Any] = {"data": f"cifar10:{train}", "n": n,
                           "data_options": {"standardize": standardize, "flatten": flatten}}
    test = data_file(CIFAR10_TEST)
    if test is not None:
        options: dict[str, Any] = {"standardize": standardize, "flatten": flatten}
        if flatten:
            options["feature_stats"] = "train"
        out.update(test_data=f"cifar10:{test}", test_n=None, test_data_options=options)
    return out


def _mnist(n: int) -> dict[str, Any] | None:
    path = data_file(MNIST_5K)
    return None if path is None else {"data": f"mnist:{path}", "n": n, "data_options": {"order": "interleave"}}


def check_scale(scale: str) -> None:
    if scale not in SCALES:
        raise ConfigError(f"unknown scale {scale!r}; valid: {', '.join(SCALES)}")


def eos_gd(scale: str, *, optimizer: str = "gd", momentum: float | None = None, loss: str = "mse") -> TrainConfig:
    """Cohen et al. fc-tanh / MSE / full-batch GD (see the module docstring)."""
    check_scale(scale)
    kw: dict[str, Any] = {}
    if momentum is not None:
        kw["momentum"] = momentum
    if scale == "smoke":
        return TrainConfig(model=fc(40, [32, 32], "tanh"), **mnist1d_data(128, 100), loss=loss,
                           optimizer=optimizer, optimizer_kwargs={"lr": 0.01, **kw}, physical_batch_size=128,
                           steps=60, measure_every=5, trace=True, checkpoint_every=10,
                           curvature=RUN_DEFAULTS.replace(k=2, trace_method="hutchinson", trace_matvecs=8,
                                                          cache_graphs=True))
    if scale == "cpu":
        n, steps = (500, 600) if momentum is not None else (1000, 800)
        return TrainConfig(model=fc(40, [100, 100], "tanh"), **mnist1d_data(n, None), loss=loss,
                           optimizer=optimizer, optimizer_kwargs={"lr": 0.2, **kw}, physical_batch_size=1000,
                           steps=steps, measure_every=10, checkpoint_every=100,
                           curvature=RUN_DEFAULTS.replace(k=1, cache_graphs=True))
    data = cifar_data(5000, flatten=True)
    in_features = 3072 if data is not None else 40
    data = data or mnist1d_data(None, 1000)
    return TrainConfig(model=fc(in_features, [200, 200], "tanh"), **data, loss=loss, optimizer=optimizer,
                       optimizer_kwargs={"lr": 0.01, **kw}, physical_batch_size=1000, steps=20000,
                       stop_at_train_acc=0.99, measure_every=50, trace=True, checkpoint_every=500, device="auto",
                       curvature=RUN_DEFAULTS.replace(k=2, hvp_mode="fwd-rev"))


def eos_cifar5k(scale: str, *, lr: float = 0.02) -> TrainConfig:
    """Cohen et al.'s own data on CPU: full-batch GD, fc-tanh 200-200, MSE, the first 5 000 CIFAR-10 images.

    cpu: ``η = 2/100`` (the crossing of 2/η comes within the first ~2 000 steps), 3 000 steps with
    λ_max every 25 steps and no train-accuracy stop, so the run stays at the edge for well over
    500 steps after it first reaches 0.9·2/η (its cost on a CPU: ``docs/speed-options.md``). gpu: the paper's ``η = 0.01``
    with the 99% stop (:func:`eos_gd`'s gpu scale). smoke: 200 images, plumbing only.
    Needs ``cifar10_train16k.npz`` under the data root.
    """
    check_scale(scale)
    data = cifar_data(5000 if scale != "smoke" else 200, flatten=True)
    if data is None:
        raise missing_data("eos-cifar5k", CIFAR10_TRAIN)
    if scale == "gpu":
        return eos_gd("gpu")
    data = {k: v for k, v in data.items() if not k.startswith("test_")}  # the claim is λ_max; no test set
    steps, every = (3000, 25) if scale == "cpu" else (6, 3)
    return TrainConfig(model=fc(3072, [200, 200], "tanh"), **data, loss="mse", optimizer="gd",
                       optimizer_kwargs={"lr": lr}, physical_batch_size=1000, steps=steps, measure_every=every,
                       checkpoint_every=every * 4,
                       curvature=RUN_DEFAULTS.replace(k=1, cache_graphs=True,
                                                      max_iter=10 if scale == "smoke" else None))


def eos_momentum(scale: str) -> TrainConfig:
    """:func:`eos_gd` with Polyak momentum β = 0.9 (threshold 3.8/η)."""
    return eos_gd(scale, optimizer="sgd", momentum=0.9)


def eos_ce(scale: str) -> TrainConfig:
    """:func:`eos_gd` with cross entropy (E3: λ_max rises to about 2/η and hovers, may fall late)."""
    return eos_gd(scale, loss="ce")


def eos_adam(scale: str) -> TrainConfig:
    """:func:`eos_gd` with full-batch Adam and the preconditioned sharpness (E4: λ_max(P⁻¹H) settles at 38/η)."""
    check_scale(scale)
    lr = {"smoke": 1e-3, "cpu": 1e-3, "gpu": 1e-4}[scale]
    overrides: dict[str, Any] = {"optimizer": "adam", "optimizer_kwargs": {"lr": lr, "betas": [0.9, 0.999], "eps": 1e-8},
                                 "preconditioned": True}
    if scale == "cpu":
        overrides.update(steps=700, measure_every=15)
    return eos_gd(scale).with_overrides(overrides)


def sam_edge(scale: str, *, rho: float = 0.1) -> TrainConfig:
    """Long & Bartlett full-batch SAM, ReLU MLP, mse-mean (see the module docstring)."""
    check_scale(scale)
    opt = {"lr": 0.05, "rho": rho}
    if scale == "smoke":
        return TrainConfig(model=fc(40, [64, 64], "relu", "glorot_normal"), **mnist1d_data(256, 200),
                           loss="mse-mean", optimizer="sam", optimizer_kwargs=opt, physical_batch_size=128,
                           steps=40, measure_every=5, checkpoint_every=10,
                           curvature=RUN_DEFAULTS.replace(k=1, cache_graphs=True))
    data, in_features = _mnist(1000), 784
    if data is None:
        data, in_features = mnist1d_data(1000, None), 40
    if scale == "cpu":
        return TrainConfig(model=fc(in_features, [100] * 3, "relu", "glorot_normal"), **data, loss="mse-mean",
                           optimizer="sam", optimizer_kwargs={"lr": 0.4, "rho": rho}, physical_batch_size=1000,
                           steps=500, measure_every=20, checkpoint_every=100,
                           curvature=RUN_DEFAULTS.replace(k=1, cache_graphs=True))
    return TrainConfig(model=fc(in_features, [1000] * 3, "relu", "glorot_normal"), **data, loss="mse-mean",
                       optimizer="sam", optimizer_kwargs={"lr": 0.01, "rho": rho}, physical_batch_size=1000,
                       steps=20000, measure_every=50, checkpoint_every=1000, device="auto",
                       curvature=RUN_DEFAULTS.replace(k=1, hvp_mode="fwd-rev"))


def sam_edge_cnn(scale: str, *, rho: float = 0.1, smooth: bool = False) -> TrainConfig:
    """Long & Bartlett's CNN (conv-ReLU-LayerNorm-maxpool ×2) with full-batch SAM on CIFAR-10 images.

    ``cpu``: the first 250 images, channels 8/16, η = 0.004: 2/η = 500 is about twice λ_max at
    initialisation on these images (≈ 260), so GD has room to sharpen before it reaches 2/η.
    ``smooth=True`` is the smooth control: GELU activations and average pooling (the ReLU/max-pool
    net's λ_max is not a smooth function of the weights, so its curvature jumps between nearby
    iterates), at η = 0.015 for the same ratio (λ_max ≈ 69 at initialisation, 2/η ≈ 133).
    ``gpu``: the first 1 000 images, channels 32/64, η = 0.008 (not calibrated on the GPU's data).
    """
    check_scale(scale)
    data = cifar_data(1000 if scale == "gpu" else 250, flatten=False)
    if data is not None:  # λ is the claim; no test set (saves an evaluation per measurement)
        data = {k: v for k, v in data.items() if not k.startswith("test_")}
    if data is None:  # MNIST-1D cannot feed a 2-d CNN: 1 000 MNIST images (28×28) instead
        data = _mnist(1000)
        if data is None:
            raise missing_data("sam-edge-cnn", CIFAR10_TRAIN, MNIST_5K)
        data["data_options"]["flatten"] = False
    channels, size = (3, 32) if data["data"].startswith("cifar10") else (1, 28)
    if scale == "smoke":
        data["n"] = 32
    cnn: dict[str, Any] = {"name": "cnn", "kwargs": {"in_channels": channels, "num_classes": 10, "image_size": size,
                                     "channels": [8, 16] if scale != "gpu" else [32, 64], "norm": "ln"}}
    if smooth:
        cnn["kwargs"].update(activation="gelu", pool="avg")
    lr = {"gpu": 0.008}.get(scale, 0.015 if smooth else 0.004)
    steps, every = {"smoke": (10, 5), "cpu": (300, 10), "gpu": (5000, 50)}[scale]
    return TrainConfig(model=cnn, **data, loss="mse-mean", optimizer="sam",
                       optimizer_kwargs={"lr": lr, "rho": rho},
                       physical_batch_size=500, steps=steps, measure_every=every, checkpoint_every=every * 5,
                       device="auto" if scale == "gpu" else "cpu",
                       curvature=RUN_DEFAULTS.replace(k=1, cache_graphs=scale != "gpu", hvp_mode="rev-rev",
                                                      max_iter=10 if scale == "smoke" else None))


def sam_minibatch(scale: str, *, rho: float = 0.05, momentum: float = 0.0) -> TrainConfig:
    """Mini-batch SAM (batch 128) on the smooth CNN (GELU, LayerNorm, average pooling) with CIFAR-10: each
    measurement records λ_max on a fixed probe subset and, for the step's own mini-batch, λ_max of the
    batch loss and the gradient norm SAM normalised (``batch_sharpness``), so the SAM-edge can be formed
    from either gradient norm and compared with either sharpness. ρ = 0 is the SGD control.

    ``cpu``: 1 000 images, probe subset 250, channels 8/16, η = 0.02, 300 steps, measured every 10.
    ``gpu``: 16 000 images, probe subset 2 000, channels 32/64, 5 000 steps.
    """
    check_scale(scale)
    n, probe, widths, steps, every = {"smoke": (64, 32, [4, 8], 6, 2), "cpu": (1000, 250, [8, 16], 300, 10),
                                      "gpu": (16000, 2000, [32, 64], 5000, 50)}[scale]
    data = cifar_data(n, flatten=False)
    if data is None:
        raise missing_data("sam-minibatch", CIFAR10_TRAIN)
    data = {k: v for k, v in data.items() if not k.startswith("test_")}
    cnn: dict[str, Any] = {"name": "cnn", "kwargs": {"in_channels": 3, "num_classes": 10, "image_size": 32, "channels": widths,
                                     "norm": "ln", "activation": "gelu", "pool": "avg"}}
    opt: dict[str, Any] = {"lr": 0.02, "rho": rho}
    if momentum:
        opt["momentum"] = momentum
    return TrainConfig(model=cnn, **data, loss="mse-mean", optimizer="sam", optimizer_kwargs=opt,
                       batch_size=128 if scale != "smoke" else 16, probe_n=probe, physical_batch_size=500,
                       steps=steps, measure_every=every, checkpoint_every=every * 5, batch_sharpness=True,
                       device="auto" if scale == "gpu" else "cpu",
                       curvature=RUN_DEFAULTS.replace(k=1, cache_graphs=scale != "gpu", hvp_mode="rev-rev",
                                                      max_iter=10 if scale == "smoke" else None))


def sam_flatness(scale: str, *, optimizer: str = "sgd", rho: float = 0.05) -> TrainConfig:
    """Foret et al.'s flatness comparison (G3) on a BatchNorm-free ReLU MLP, cross entropy, mini-batch 128.

    ``optimizer`` ``sgd`` (the control), ``sam`` or ``sparse-sam`` (SSAM-D, 50%); λ_1..λ_5 are
    measured on a fixed training subset, so λ_max/λ_5 is read from the last record.
    """
    check_scale(scale)
    widths, n, steps, every = {"smoke": ([32], 256, 20, 10), "cpu": ([256, 256], None, 3000, 300),
                               "gpu": ([1024, 1024], None, 20000, 1000)}[scale]
    opt: dict[str, Any] = {"lr": 0.05, "momentum": 0.9}
    if optimizer != "sgd":
        opt["rho"] = rho
    if optimizer == "sparse-sam":  # SSAM-D: a random mask, drop-and-regrow every steps/30
        opt.update(sparsity=0.5, mask="dynamic", total_steps=steps, update_interval=max(1, steps // 30))
    return TrainConfig(model=fc(40, widths, "relu"), **mnist1d_data(n, 200 if scale == "smoke" else 1000),
                       loss="ce", optimizer=optimizer, optimizer_kwargs=opt, batch_size=128, probe_n=1000,
                       physical_batch_size=1000, steps=steps, measure_every=every, checkpoint_every=every,
                       device="cpu" if scale != "gpu" else "auto", curvature=RUN_DEFAULTS.replace(k=5, tol=1e-4))


def demo(scale: str) -> TrainConfig:
    """Mini-batch SGD + momentum, cross entropy, MNIST-1D, with trace estimates."""
    check_scale(scale)
    steps, every = {"smoke": (60, 20), "cpu": (2000, 100), "gpu": (5000, 100)}[scale]
    n, test_n = (256, 200) if scale == "smoke" else (None, 1000)
    return TrainConfig(model=fc(40, [100, 100], "relu"), **mnist1d_data(n, test_n), loss="ce", optimizer="sgd",
                       optimizer_kwargs={"lr": 0.05, "momentum": 0.9}, batch_size=128, steps=steps,
                       measure_every=every, trace=True, checkpoint_every=every,
                       device="cpu" if scale != "gpu" else "auto",
                       curvature=RUN_DEFAULTS.replace(k=1, trace_matvecs=30))


def landscape_resnet18(scale: str) -> TrainConfig:
    """CIFAR ResNet-18 (BatchNorm) trained by mini-batch SGD, every checkpoint kept (see the module docstring)."""
    check_scale(scale)
    n, width, steps, every, measure = {"smoke": (64, 2, 4, 2, 4), "cpu": (2000, 8, 300, 20, 100),
                                       "gpu": (5000, 64, 3000, 200, 500)}[scale]
    data = cifar_data(n, flatten=False)
    if data is None:
        raise missing_data("landscape-resnet18", CIFAR10_TRAIN)
    if scale == "smoke":
        data["test_n"] = 64 if "test_data" in data else None
    model = {"name": "resnet18", "kwargs": {"num_classes": 10, "norm": "bn", "width": width}}
    return TrainConfig(model=model, **data, loss="ce", optimizer="sgd", optimizer_kwargs={"lr": 0.05, "momentum": 0.9},
                       batch_size=128 if scale != "smoke" else 32, probe_n=min(n, 500), physical_batch_size=500,
                       steps=steps, measure_every=measure, checkpoint_every=every, keep_checkpoints=True,
                       device="auto" if scale == "gpu" else "cpu",
                       curvature=RUN_DEFAULTS.replace(k=1, max_iter=10 if scale == "smoke" else None))


RECIPES: dict[str, Callable[[str], TrainConfig]] = {
    "eos-gd": eos_gd,
    "eos-momentum": eos_momentum,
    "eos-ce": eos_ce,
    "eos-adam": eos_adam,
    "eos-cifar5k": eos_cifar5k,
    "sam-edge": sam_edge,
    "sam-edge-cnn": sam_edge_cnn,
    "sam-minibatch": sam_minibatch,
    "sam-flatness": sam_flatness,
    "demo": demo,
    "landscape-resnet18": landscape_resnet18,
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
            raise ConfigError(f"an override must look like KEY=VALUE, got {item!r}")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        except RecursionError:
            raise ConfigError(f"{key} nests lists/dicts more than {MAX_DEPTH} levels deep", argument=key) from None
        out[key] = check_depth(key, value)
    return out


def get_recipe(name: str, scale: str = "smoke", overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """The recipe ``name`` at ``scale`` with ``overrides`` applied (``recipe``/``scale`` recorded)."""
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; valid: {', '.join(RECIPES)}")
    check_scale(scale)
    cfg = RECIPES[name](scale)
    cfg.recipe, cfg.scale = name, scale
    cfg.validate()
    return cfg.with_overrides(overrides) if overrides else cfg
