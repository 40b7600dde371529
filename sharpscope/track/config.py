"""The configuration of a training run: one JSON-serialisable dataclass, with the curvature
settings of its measurements nested as ``curvature``.

Everything that determines the run's numbers is here (and stored as ``config.json``), so two runs
with equal configs on the same machine give identical records, and a resumed run can check that
it continues the run it thinks it continues. A stored config of an older run-directory format is read
into the current layout by :mod:`sharpscope.io.migrations` (:meth:`TrainConfig.from_dict`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sharpscope.curvature.settings import RUN_DEFAULTS, CurvatureSettings
from sharpscope.errors import ConfigError
from sharpscope.io.migrations import migrate_config
from sharpscope.models.registry import MODEL_DTYPES, ModelDtype
from sharpscope.track.logs import check_logs
from sharpscope.track.tracker import PROBES
from sharpscope.track.update_curvature import resolve_method
from sharpscope.validation import MAX_DEPTH, check_bool, check_choice, check_depth, check_int, check_real, check_seed

OPTIMIZERS = ("gd", "sgd", "sam", "sparse-sam", "rs", "sa", "adam", "adamw")

#: Config fields that say where records go, not what the run computes: a resume may change them.
OUTPUT_FIELDS = ("log",)


@dataclass
class TrainConfig:
    """A training run with sharpness tracking.

    Model and data:
        model: a model spec ``{"name": ..., "kwargs": {...}}`` (:class:`sharpscope.models.ModelSpec`).
        init_from: start from these weights instead of the seeded initialisation: a checkpoint file
            or a run directory (its latest checkpoint); read safely, its stored spec must equal
            ``model``. The file used and its step are recorded in the summary (``init``).
        data, n, data_options: training set, ``resolve_data(data, n=n, **data_options)``.
        test_data, test_n, test_data_options: optional fixed test set (``train=False``). The option
            value ``"feature_stats": "train"`` standardises a CIFAR test file with the per-feature
            statistics of the *training* file (Cohen et al.'s convention).
        probe_n: the tracker's probe set is the first ``probe_n`` training examples (None: all of
            them, which is the objective full-batch GD descends; Cohen et al. use 5000).
    Training:
        loss: ``ce``, ``mse`` (½‖f−e_y‖² summed over classes) or ``mse-mean``.
        optimizer: ``gd``/``sgd`` (``torch.optim.SGD``), ``sam`` / ``sparse-sam``
            (``sharpscope.optim.SAM`` / ``SparseSAM`` over ``base`` = ``sgd`` or ``adam``), ``rs`` /
            ``sa`` (``sharpscope.optim.RS`` / ``SA``, whose "full gradient" is the gradient of the
            batch in use: the whole set in full batch, else the mini-batch), ``adam``, ``adamw``;
            ``optimizer_kwargs`` go to it
            (``lr``, ``momentum``, ``nesterov``, ``dampening``, ``weight_decay``, ``betas``,
            ``rho``, ``base``, ...).
        batch_size: mini-batch size; None = full batch (gradient accumulated over fixed physical
            batches of ``physical_batch_size``, weighted by example counts).
        label_noise: label-noise SGD (Damian et al.): each label of every mini-batch is flipped with
            this probability to a uniformly drawn other class, with fresh noise at every step drawn
            from ``(seed, step)`` alone (:func:`sharpscope.data.fresh_label_noise`), so a resumed run
            redraws it exactly. The probe and test sets keep their clean labels. None: no noise.
        steps: optimizer steps. stop_at_train_acc: stop once the training accuracy reaches it
            (every step in full-batch mode, at measurements in mini-batch mode). stop_at_train_loss: stop
            once the training loss is at or below it (the same way; in mini-batch mode the loss of the probe
            set at a measurement, so runs stopped at one loss are compared at equal loss); status
            ``reached_train_loss``.
    Tracking:
        measure_every, trace, alignment (cosines of the gradient and of the update with the top-k
        eigenvectors, in ``"alignment"`` records): see :class:`~sharpscope.track.tracker.SharpnessTracker`.
        curvature: how each measurement is computed, a :class:`~sharpscope.curvature.CurvatureSettings`
            (``k``, ``tol``, ``max_iter``, ``stop``, ``trace_method``, ``trace_matvecs``, ``bn``,
            ``hvp_mode``, ...; in ``config.json`` a dict under ``"curvature"``). Its defaults are
            :data:`~sharpscope.curvature.settings.RUN_DEFAULTS`: ``hvp_mode`` is fixed (``rev-rev``,
            not ``auto``) so records are reproducible to the last bit, and no graph is cached.
        batch_sharpness: at each measured step of mini-batch SAM, also λ_max of the loss on the
            mini-batch that step uses (Lanczos, k = 1), in its ``"sam_batch"`` record beside the
            gradient norm SAM normalised: the pair a mini-batch SAM-edge compares. Needs ``sam`` and
            ``batch_size`` (ρ = 0 gives the SGD control).
        preconditioned: also measure Adam's preconditioned sharpness ``λ_max(P⁻¹H)``, ``P = diag(√v̂ + ε)``
            (what the Adam edge bounds; ``preconditioned_eigenvalues`` in the records); only with
            ``adam``/``adamw`` or ``sam``/``sparse-sam`` over ``base`` = ``adam``/``adamw``.
        update_curvature: ``"hvp"`` (one Hessian-vector product; also ``true``) or ``"fd"`` (three forward passes) to
            record, every ``update_every`` steps, the curvature along the update the optimizer takes,
            ``κ_u = uᵀHu/‖u‖²`` with ``u = θ_{t+1} − θ_t`` (and ``uᵀHu/uᵀPu`` for Adam) in
            ``"update_curvature"`` records with their cost (:mod:`sharpscope.track.update_curvature`);
            None: off.
        update_every: steps between update-curvature readings (1: every step).
        test_predictions: record at each measurement which test examples are classified right
            (``test_correct``, packed bits), for paired comparisons of two runs' accuracies.
        checkpoint_every: steps between checkpoints (the final step is always checkpointed).
        keep_checkpoints: keep every checkpoint (``checkpoints/step-*.pt``, e.g. as the iterates of a
            landscape path) instead of only the latest; resume still starts from the latest.
    Execution:
        seed: model initialisation, mini-batch order, Lanczos and trace probes (all explicit
            generators). probe_seed: seeds the Lanczos start and trace probes instead (None: ``seed``),
            so runs that differ in ``seed`` can share their estimator's random numbers: a difference
            between their traces then comes from the weights, not from the probes. probes: ``"per-step"`` (the
            default) redraws those vectors at every measurement from ``(probe seed, step)``; ``"fixed"`` draws
            the same ones at every measurement (common random numbers over steps as well as runs). device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``. dtype: ``float32``/``float64``.
        recipe, scale: where the config came from (informational).
        log: where the records also go, ``KIND:TARGET`` entries (:mod:`sharpscope.track.logs`):
            ``tensorboard:DIR``, ``csv:PATH``, ``wandb:PROJECT``. Not part of what the run computes: a
            run resumed with other entries is the same run (the stored config takes the new ones).
    """

    model: dict[str, Any]
    init_from: str | None = None
    data: str = "mnist1d"
    n: int | None = None
    data_options: dict[str, Any] = field(default_factory=dict)
    test_data: str | None = None
    test_n: int | None = None
    test_data_options: dict[str, Any] = field(default_factory=dict)
    probe_n: int | None = None
    loss: str = "mse"
    optimizer: str = "gd"
    optimizer_kwargs: dict[str, Any] = field(default_factory=lambda: {"lr": 0.01})
    batch_size: int | None = None
    physical_batch_size: int = 1000
    label_noise: float | None = None
    steps: int = 1000
    stop_at_train_acc: float | None = None
    stop_at_train_loss: float | None = None
    measure_every: int = 50
    curvature: CurvatureSettings = RUN_DEFAULTS
    trace: bool = False
    alignment: bool = False
    preconditioned: bool = False
    batch_sharpness: bool = False
    update_curvature: str | bool | None = None
    update_every: int = 1
    test_predictions: bool = False
    checkpoint_every: int = 100
    keep_checkpoints: bool = False
    seed: int = 0
    probe_seed: int | None = None
    probes: str = "per-step"
    device: str = "cpu"
    dtype: ModelDtype = "float32"
    recipe: str | None = None
    scale: str | None = None
    log: list[str] = field(default_factory=list)

    # ------------------------------------------------------------------------ conversion
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready deep copy."""
        return json.loads(json.dumps(dataclasses.asdict(self), allow_nan=False))

    @classmethod
    def field_names(cls) -> list[str]:
        """The names of the config's fields, in order."""
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """The default of every field that has one (``model`` has none), JSON-ready."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                out[f.name] = f.default.to_dict() if isinstance(f.default, CurvatureSettings) else f.default
            elif f.default_factory is not dataclasses.MISSING:
                out[f.name] = f.default_factory()
        return json.loads(json.dumps(out))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`, also of a stored config of any known run-directory format
        (:func:`sharpscope.io.migrations.migrate_config`); unknown keys raise :class:`ConfigError` listing
        the valid ones."""
        if "model" not in d:
            raise ConfigError("a train config needs 'model' ({'name': ..., 'kwargs': {...}})", argument="model")
        current = migrate_config(d)
        unknown = sorted(set(current) - set(cls.field_names()))
        if unknown:
            raise ConfigError(f"unknown config key(s) {unknown}; valid: {', '.join(cls.field_names())}")
        fields = {k: json.loads(json.dumps(v)) for k, v in current.items()}
        fields["curvature"] = CurvatureSettings.from_dict(fields.get("curvature", {}), base=RUN_DEFAULTS)
        cfg = cls(**fields)
        cfg.validate()
        return cfg

    def with_overrides(self, overrides: Mapping[str, Any]) -> TrainConfig:
        """A copy with ``{"key": value}`` or dotted ``{"optimizer_kwargs.lr": 0.02}`` replaced.

        Dotted keys reach into the dict-valued fields (``model.kwargs.widths``,
        ``data_options.standardize``, ``curvature.k``); missing intermediate dicts are created. A
        curvature setting may also be named alone (``"k"`` for ``"curvature.k"``).
        """
        d = self.to_dict()
        for key, value in overrides.items():
            parts = key.split(".")
            if len(parts) > MAX_DEPTH:  # a key as deep as the values allowed; deeper ones overflow the stack
                raise ConfigError(f"{'.'.join(parts[:3])}... nests {len(parts)} levels deep, more than {MAX_DEPTH}",
                                  argument=parts[0])
            if parts[0] in CurvatureSettings.field_names():
                parts = ["curvature", *parts]
            if parts[0] not in d:
                raise ConfigError(f"unknown config key {parts[0]!r} in {key!r}; valid: {', '.join(self.field_names())}")
            target = d
            for i, part in enumerate(parts[:-1]):
                if target.get(part) is None and i > 0:
                    target[part] = {}
                if not isinstance(target.get(part), dict):
                    raise ConfigError(f"{'.'.join(parts[:i + 1])} is not a dict; cannot set {key!r}", argument=key)
                target = target[part]
            target[parts[-1]] = value
        return TrainConfig.from_dict(d)

    # ------------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise :class:`ConfigError` on a value out of range (one message per problem)."""
        for f in dataclasses.fields(self):
            check_depth(f.name, getattr(self, f.name))
        for key, value in _leaves(dataclasses.asdict(self)):  # config.json is strict JSON
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{key} must be a finite number, got {value}", argument=key)
        if not isinstance(self.model, dict) or "name" not in self.model:
            raise ConfigError(f"model must be {{'name': ..., 'kwargs': {{...}}}}, got {self.model!r}", argument="model")
        if self.init_from is not None and (not isinstance(self.init_from, str) or not self.init_from):
            raise ConfigError(f"init_from must be a checkpoint file or run directory path, got {self.init_from!r}",
                              argument="init_from")
        if not isinstance(self.curvature, CurvatureSettings):
            raise ConfigError(f"curvature must be a CurvatureSettings (a dict in TrainConfig.from_dict), got "
                              f"{type(self.curvature).__name__}", argument="curvature")
        for name in ("n", "test_n", "probe_n", "batch_size"):
            check_int(name, getattr(self, name), low=1, optional=True)
        for name in ("physical_batch_size", "measure_every", "checkpoint_every", "update_every"):
            check_int(name, getattr(self, name), low=1)
        check_int("steps", self.steps, low=0)
        check_seed("seed", self.seed)
        check_seed("probe_seed", self.probe_seed, optional=True)
        check_choice("probes", self.probes, PROBES)
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; valid: {', '.join(OPTIMIZERS)}",
                              argument="optimizer")
        if not isinstance(self.optimizer_kwargs, dict) or "lr" not in self.optimizer_kwargs:
            raise ConfigError("optimizer_kwargs must be a dict with at least 'lr'", argument="optimizer_kwargs")
        for name in ("data_options", "test_data_options"):
            if not isinstance(getattr(self, name), dict):
                raise ConfigError(f"{name} must be a dict, got {getattr(self, name)!r}", argument=name)
        check_real("stop_at_train_acc", self.stop_at_train_acc, low=0.0, low_open=True, high=1.0, optional=True)
        check_real("stop_at_train_loss", self.stop_at_train_loss, low=0.0, optional=True)
        check_real("label_noise", self.label_noise, low=0.0, high=1.0, high_open=True, optional=True)
        if self.label_noise is not None and self.batch_size is None:
            raise ConfigError("label_noise draws fresh noisy labels for each mini-batch and needs batch_size",
                              argument="label_noise")
        if self.label_noise is not None and self.loss != "ce":
            raise ConfigError(f"label_noise flips class labels and needs loss 'ce', got {self.loss!r}",
                              argument="label_noise")
        if self.batch_sharpness and (self.optimizer != "sam" or self.batch_size is None):
            raise ConfigError("batch_sharpness measures the mini-batch of a SAM step and needs optimizer 'sam' "
                              "(rho=0 for an SGD control) and batch_size", argument="batch_sharpness")
        for name in ("trace", "alignment", "preconditioned", "batch_sharpness", "test_predictions"):
            check_bool(name, getattr(self, name))
        adam = self.optimizer in ("adam", "adamw") or (self.optimizer in ("sam", "sparse-sam") and isinstance(
            self.optimizer_kwargs, dict) and self.optimizer_kwargs.get("base", "sgd") in ("adam", "adamw"))
        if self.preconditioned and not adam:
            raise ConfigError("preconditioned=true measures Adam's preconditioned sharpness and needs optimizer adam or "
                              f"adamw (or sam/sparse-sam with base adam/adamw), got {self.optimizer!r}",
                              argument="preconditioned")
        resolve_method(self.update_curvature)
        check_bool("keep_checkpoints", self.keep_checkpoints)
        check_logs(self.log)
        check_choice("dtype", self.dtype, MODEL_DTYPES)
        if not isinstance(self.device, str) or not self.device:
            raise ConfigError(f"device must be a string like cpu, cuda, cuda:1 or auto, got {self.device!r}",
                              argument="device")


def _leaves(value: Any, key: str = "") -> list[tuple[str, Any]]:
    """``(dotted key, value)`` for every non-container value of nested dicts and lists."""
    if isinstance(value, dict):
        return [leaf for k, v in value.items() for leaf in _leaves(v, f"{key}.{k}" if key else str(k))]
    if isinstance(value, (list, tuple)):
        return [leaf for i, v in enumerate(value) for leaf in _leaves(v, f"{key}[{i}]")]
    return [(key, value)]
