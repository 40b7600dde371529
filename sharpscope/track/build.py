"""What a training run is made of, built from its :class:`~sharpscope.track.TrainConfig`: the data
sets, the model (initialised from the config's seed), the optimizer and the sharpness tracker.

Building checks the config against the data and the model (one forward pass on two examples, the
tracker's ``k`` against the number of parameters) before :mod:`sharpscope.track.runner` touches the
run directory, so a bad config leaves no trace.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sharpscope.curvature.fits import check_model_fits as fits
from sharpscope.curvature.operators.objective import LossFn
from sharpscope.data import ArrayDataset, cifar_feature_stats, resolve_data
from sharpscope.errors import CheckpointError, ConfigError
from sharpscope.io import fit_state_dict, read_checkpoint
from sharpscope.io.records import RunRecord
from sharpscope.io.rundir import RunDirectory
from sharpscope.models import ModelSpec
from sharpscope.models.registry import DTYPES
from sharpscope.optim import RS, SA, SAM, SparseSAM, empirical_fisher_diagonal
from sharpscope.track.config import TrainConfig
from sharpscope.track.tracker import SharpnessTracker
from sharpscope.validation import check_int, offset_seed

__all__ = ["build_data", "build_model", "build_optimizer", "build_tracker", "check_model_fits", "check_optimizer_options", "fisher_scores",
           "load_initial_weights"]

_BASES: dict[str, type[torch.optim.Optimizer]] = {"sgd": torch.optim.SGD, "gd": torch.optim.SGD,
                                                   "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


def _options(options: Mapping[str, Any], train_spec: str) -> dict[str, Any]:
    out = dict(options)
    if out.get("feature_stats") == "train":
        name, _, path = train_spec.partition(":")
        if name.lower() not in ("cifar10", "cifar100") or not path:
            raise ConfigError(f"'feature_stats': 'train' needs a CIFAR training set, got data {train_spec!r}",
                              argument="data_options")
        out["feature_stats"] = cifar_feature_stats(path, dataset=name.lower())  # type: ignore[arg-type]
    return out


def build_data(cfg: TrainConfig) -> tuple[ArrayDataset, ArrayDataset | None]:
    """The training set and the optional test set of ``cfg`` (CPU, as loaded)."""
    train_set = resolve_data(cfg.data, n=cfg.n, train=True, **_options(cfg.data_options, cfg.data))
    test_set = None
    if cfg.test_data:
        test_set = resolve_data(cfg.test_data, n=cfg.test_n, train=False,
                                **_options(cfg.test_data_options, cfg.data))
    return train_set, test_set


def build_model(cfg: TrainConfig, device: torch.device, dtype: torch.dtype) -> tuple[nn.Module, ModelSpec]:
    """The model of ``cfg``, initialised from ``cfg.seed`` without touching the global RNG."""
    spec = ModelSpec.from_dict(cfg.model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = spec.build()
    return model.to(device=device, dtype=dtype), spec


def load_initial_weights(source: str, model: nn.Module, spec: ModelSpec) -> dict[str, Any]:
    """Load ``init_from`` into ``model``: a checkpoint file, or a run directory's latest checkpoint.

    The checkpoint is read safely; a stored spec must equal ``spec``. Returns ``{"path", "step"}``.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        latest = RunDirectory(path).latest_checkpoint()
        if latest is None:
            raise CheckpointError(f"init_from {source}: the folder holds no run checkpoint", argument="init_from")
        path = latest[1]
    elif not path.exists():
        raise CheckpointError(f"init_from {source}: no such checkpoint file or run directory", argument="init_from")
    raw = read_checkpoint(path, unsafe_flag="")
    if raw.spec is not None and raw.spec != spec:
        raise CheckpointError(f"init_from {path}: model spec {raw.spec} differs from the config's {spec}",
                              argument="init_from")
    fit_state_dict(model, raw.state_dict, source=str(path))
    step = raw.extra.get("step")
    return {"path": str(path.resolve()), "step": step if isinstance(step, int) else None}


def fisher_scores(cfg: TrainConfig, model: nn.Module, train_set: ArrayDataset, loss_fn: LossFn,
                  samples: int) -> Callable[[], list[Tensor]]:
    """SSAM-F's scores: the empirical Fisher diagonal over ``samples`` training examples drawn once
    (without replacement, seeded by ``cfg.seed``) — :func:`~sharpscope.optim.empirical_fisher_diagonal`."""
    samples = check_int("fisher_samples", samples, low=1)
    gen = torch.Generator().manual_seed(offset_seed(cfg.seed, 2))
    idx = torch.randperm(len(train_set), generator=gen)[:samples].to(train_set.x.device)
    x, y = train_set.x[idx], train_set.y[idx]
    return lambda: empirical_fisher_diagonal(model, lambda m, xb, yb: loss_fn(m(xb), yb), x, y)


def check_fits_dtype(kwargs: Mapping[str, Any], model: nn.Module) -> None:
    """Refuse an optimizer number the weights' dtype cannot hold (``lr=1e308`` for float32 weights
    overflows inside the update), naming ``optimizer_kwargs.KEY``, before any step."""
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if not dtypes:
        return
    limit = min(torch.finfo(d).max for d in dtypes)
    for key, value in kwargs.items():
        for number in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(number, float) and abs(number) > limit:
                raise ConfigError(f"optimizer_kwargs.{key}={number!r} overflows the weights' "
                                  f"{str(min(dtypes, key=lambda d: torch.finfo(d).max)).removeprefix('torch.')} "
                                  f"(largest {limit:.3g})", argument=f"optimizer_kwargs.{key}")


def build_optimizer(cfg: TrainConfig, model: nn.Module, train_set: ArrayDataset,
                    loss_fn: LossFn, *, scores: bool = True) -> torch.optim.Optimizer:
    """``gd``/``sgd``/``adam``/``adamw`` from ``torch.optim``; ``sam``/``sparse-sam`` =
    :class:`sharpscope.optim.SAM`/:class:`~sharpscope.optim.SparseSAM` over
    ``optimizer_kwargs["base"]`` (default ``sgd``) with radius ``rho``; ``rs``/``sa`` =
    :class:`~sharpscope.optim.RS`/:class:`~sharpscope.optim.SA` (seeded from ``cfg.seed`` unless
    ``seed`` is given; SA draws its examples from the training set).

    Sparse SAM with a ``fisher`` or ``nm`` mask scores coordinates by :func:`fisher_scores` over
    ``fisher_samples`` examples (default 128), computes the first mask before step 0 and updates it
    every ``update_interval`` steps (default: never again), so no step runs with an empty mask
    (``scores=False`` skips that first mask: :func:`check_optimizer_options` builds without data)."""
    kwargs = dict(cfg.optimizer_kwargs)
    check_fits_dtype(kwargs, model)
    try:
        if cfg.optimizer in ("sam", "sparse-sam"):
            base = str(kwargs.pop("base", "sgd"))
            if base not in _BASES:
                raise ConfigError(f"unknown SAM base optimizer {base!r}; valid: {', '.join(_BASES)}",
                                  argument="optimizer_kwargs.base")
            rho = kwargs.pop("rho", 0.05)
            if cfg.optimizer == "sam":
                return SAM(model.parameters(), _BASES[base], rho=rho, model=model, **kwargs)
            samples = kwargs.pop("fisher_samples", 128)
            if kwargs.get("mask", "fisher") in ("fisher", "nm"):
                kwargs["score_fn"] = fisher_scores(cfg, model, train_set, loss_fn, samples)
                kwargs.setdefault("update_interval", cfg.steps + 1)
            opt = SparseSAM(model.parameters(), _BASES[base], rho=rho, model=model, **kwargs)
            if scores and opt.mask_kind in ("fisher", "nm"):
                opt.update_mask()
            return opt
        if cfg.optimizer in ("rs", "sa"):
            kwargs.setdefault("seed", cfg.seed)
            kwargs.setdefault("lr_perturb", None)
            default_batch = "independent" if cfg.optimizer == "sa" else "same"
            if kwargs.get("perturbation_batch", default_batch) == "same":
                # the perturbation batch is the descent batch: B for the scaling rule is its size
                kwargs.setdefault("batch_size", cfg.batch_size or len(train_set))
            else:
                kwargs.setdefault("num_examples", len(train_set))
            cls = SA if cfg.optimizer == "sa" else RS
            return cls(model.parameters(), model=model, **kwargs)
        if "betas" in kwargs and isinstance(kwargs["betas"], list):
            kwargs["betas"] = tuple(kwargs["betas"])
        return _BASES[cfg.optimizer](model.parameters(), **kwargs)
    except TypeError as e:
        raise ConfigError(f"optimizer {cfg.optimizer!r} does not accept {cfg.optimizer_kwargs}: {e}",
                          argument="optimizer_kwargs") from None
    except ValueError as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"optimizer {cfg.optimizer!r}: {e}", argument="optimizer_kwargs") from None


def check_optimizer_options(cfg: TrainConfig) -> None:
    """Build the configured optimizer over a stand-in (a 2 × 2 linear layer and zero examples of the
    configured count), so that a bad option fails in one line naming ``optimizer_kwargs.KEY`` before any
    data or model loads. Only the optimizers' own argument checks are reported; anything else the
    stand-in trips on is left to the real build."""
    dtype = DTYPES[cfg.dtype]
    count = max(8, cfg.n or 0, cfg.batch_size or 0)
    stand_in = ArrayDataset(torch.zeros(count, 2, dtype=dtype), torch.zeros(count, dtype=torch.long), "stand-in")
    try:
        with torch.random.fork_rng(devices=[]):  # the stand-in leaves the run's random stream alone
            build_optimizer(cfg, nn.Linear(2, 2).to(dtype), stand_in, lambda out, y: out.sum() * 0.0, scores=False)
    except ConfigError as e:
        key = e.argument if isinstance(e.argument, str) else None
        if key in cfg.optimizer_kwargs:
            raise ConfigError(str(e).replace(f"{key} ", f"optimizer_kwargs.{key} ", 1),
                              argument=f"optimizer_kwargs.{key}") from None
        raise
    except Exception:  # noqa: BLE001 - the stand-in, not the options: the real build reports it
        return


def check_model_fits(model: nn.Module, loss_fn: LossFn, data: ArrayDataset, k: int) -> None:
    """:func:`sharpscope.curvature.fits.check_model_fits` on a data set, before any file is written."""
    fits(model, loss_fn, data.x, data.y, name=data.name, k=k)


def build_tracker(cfg: TrainConfig, probe: Any, test: Any, loss_fn: LossFn,
                  sink: Callable[[RunRecord], Any] | None = None) -> SharpnessTracker:
    """The tracker of ``cfg`` on the probe set ``probe`` (and the fixed test set ``test``, or None):
    its curvature settings, trace, alignment and preconditioned measurements every ``measure_every``
    steps, the update curvature every ``update_every`` steps, physical batches of ``physical_batch_size``, random vectors seeded by ``probe_seed`` (or
    ``seed``; with the step unless ``probes="fixed"``), records passed to ``sink``."""
    return SharpnessTracker(probe, loss_fn, every=cfg.measure_every, curvature=cfg.curvature, trace=cfg.trace,
                            batch_size=cfg.physical_batch_size, test_data=test,
                            seed=cfg.seed if cfg.probe_seed is None else cfg.probe_seed, sink=sink,
                            alignment=cfg.alignment, preconditioned=cfg.preconditioned,
                            update_curvature=cfg.update_curvature, update_every=cfg.update_every,
                            test_predictions=cfg.test_predictions, probes=cfg.probes)
