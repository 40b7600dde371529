"""Probe one model: top eigenvalues, the most negative one, trace, spectral density and per-layer curvature.

This is the library function behind ``sharpscope probe``; the report serialises to the JSON the
CLI prints, with every measurement's cost and the settings that produced it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Literal, get_args

from torch import Tensor, nn

from sharpscope.curvature import (
    CurvatureSettings,
    DensityResult,
    EigenResult,
    EmpiricalFisherOperator,
    GGNOperator,
    HessianOperator,
    LinearOperator,
    Objective,
    PerLayerCurvature,
    TraceResult,
    lanczos,
    per_layer_curvature,
    slq_density,
    trace_estimator,
)
from sharpscope.curvature.fits import check_model_fits
from sharpscope.curvature.operators.sharded import ShardedHessianOperator, is_sharded, shard_per_block
from sharpscope.curvature.settings import DEFAULTS
from sharpscope.errors import ConfigError
from sharpscope.measures import TAKES_M, SharpnessResult, SharpnessSettings, check_measure_names, measure
from sharpscope.measures.settings import DEFAULTS as SHARPNESS_DEFAULTS
from sharpscope.validation import check_bool, check_choice, check_int, check_seed, check_tol, check_type, offset_seed

Progress = Callable[[str, int, int], None]
Operator = Literal["hessian", "ggn", "ef"]
Shard = Literal["data", "fsdp"]


@dataclass(frozen=True)
class ProbeSettings:
    """What to measure and how; recorded with the report.

    ``curvature`` says how every estimate is computed (:class:`~sharpscope.curvature.CurvatureSettings`:
    ``k``, ``tol``, ``max_iter``, ``stop``, the trace estimator and budget, BatchNorm and product modes;
    by default the class defaults, which cache gradient graphs when they fit).
    The rest says what this probe measures: the most ``negative`` eigenvalue, the ``trace``, the
    spectral ``density`` (``density_runs`` runs of ``density_steps`` Lanczos steps, or fewer with
    ``density_tol``: see :func:`~sharpscope.curvature.slq_density`'s ``tol``), ``per_layer``
    curvature (grouped by module, or by the first ``layer_depth`` module-path components), with which
    ``operator`` (the Hessian, the generalised Gauss–Newton ``"ggn"`` or the empirical Fisher ``"ef"``),
    over batches of ``batch_size`` examples (memory only), from random vectors seeded by ``seed``.
    ``shard="fsdp"`` (under a process group) shards the model's parameters over the ranks with
    ``fully_shard`` per block and takes finite-difference products on sharded vectors
    (:class:`~sharpscope.curvature.operators.sharded.ShardedHessianOperator`); a model already sharded
    is measured that way whatever ``shard`` says. ``"data"`` keeps a whole model on every rank.
    ``sharpness`` names measures of :mod:`sharpscope.measures` to compute as well (``"worst"``,
    ``"average"``, ``"keskar"``, ``"pacbayes"``, ``"jacobian"``, ``"ggn"``) with ``sharpness_settings``;
    their seed is derived from ``seed`` (:data:`SEED_OFFSETS`) and ``m`` applies to those that take it.
    """

    curvature: CurvatureSettings = DEFAULTS
    negative: bool = False
    trace: bool = False
    density: bool = False
    density_steps: int = 90
    density_runs: int = 10
    density_tol: float | None = None  # SLQ adaptive stopping (see slq_density's tol); None: fixed steps
    batch_size: int | None = 1000
    seed: int = 0
    per_layer: bool = False
    layer_depth: int | None = None
    operator: Operator = "hessian"
    shard: Shard = "data"
    sharpness: tuple[str, ...] = ()
    sharpness_settings: SharpnessSettings = SHARPNESS_DEFAULTS

    def __post_init__(self) -> None:
        if self.sharpness:
            object.__setattr__(self, "sharpness", check_measure_names(self.sharpness, "sharpness"))
        elif not isinstance(self.sharpness, (tuple, list)):
            raise ConfigError(f"sharpness must be a sequence of measure names, got {self.sharpness!r}",
                              argument="sharpness")
        check_type("sharpness_settings", self.sharpness_settings, SharpnessSettings, "a SharpnessSettings")
        check_type("curvature", self.curvature, CurvatureSettings, "a CurvatureSettings")
        check_choice("operator", self.operator, get_args(Operator))
        if self.operator != "hessian":
            hessian_only = {"per_layer=True": self.per_layer, "cache_graphs=True": self.curvature.cache_graphs is True,
                            f"hvp_mode={self.curvature.hvp_mode!r}": self.curvature.hvp_mode != "auto",
                            "compile=True": self.curvature.compile,
                            "weight_precision='native'": self.curvature.weight_precision == "native"}
            used = [name for name, on in hessian_only.items() if on]
            if used:
                raise ConfigError(f"{', '.join(used)} appl{'ies' if len(used) == 1 else 'y'} to the Hessian only, "
                                  f"not to operator {self.operator!r}", argument="operator")
        check_choice("shard", self.shard, get_args(Shard))
        if self.shard == "fsdp":
            c = self.curvature
            unsharded = {"per_layer=True": self.per_layer, f"operator={self.operator!r}": self.operator != "hessian",
                         f"block={c.block!r}": c.block is not None, f"hvp_mode={c.hvp_mode!r}": c.hvp_mode != "auto",
                         "compile=True": c.compile, "cache_graphs=True": c.cache_graphs is True,
                         f"precision={c.precision!r}": c.precision != "strict", f"sharpness={list(self.sharpness)}": bool(self.sharpness),
                         "weight_precision='native'": c.weight_precision == "native"}
            used = [name for name, on in unsharded.items() if on]
            if used:
                raise ConfigError(f"{', '.join(used)} do{'es' if len(used) == 1 else ''} not apply to a sharded model "
                                  "(finite-difference Hessian products on sharded vectors)", argument="shard")
        for name in ("density_steps", "density_runs"):
            check_int(name, getattr(self, name), low=1)
        check_int("batch_size", self.batch_size, low=1, optional=True)
        if self.density_tol is not None:
            check_tol("density_tol", self.density_tol)
        check_seed("seed", self.seed)
        for name in ("negative", "trace", "density", "per_layer"):
            check_bool(name, getattr(self, name))
        if self.layer_depth is not None and (self.layer_depth < 1 or not self.per_layer):
            raise ConfigError(f"layer_depth must be a positive depth and needs per_layer=True, got {self.layer_depth} "
                              f"with per_layer={self.per_layer}", argument="layer_depth")


@dataclass(frozen=True)
class ProbeReport:
    """Everything one probe measured, each part with its HVPs and seconds."""

    loss: float
    grad_norm: float
    top: EigenResult
    most_negative: EigenResult | None
    trace: TraceResult | None
    density: DensityResult | None
    settings: dict[str, object] = field(default_factory=dict)
    per_layer: PerLayerCurvature | None = None
    sharpness: dict[str, SharpnessResult] | None = None

    def to_dict(self) -> dict[str, object]:
        """The JSON of ``sharpscope probe --json``: each estimate with its cost; ``eigensolver`` is how the
        top eigenvalues were computed (method, block, steps, which, seed, ...), ``settings`` how the
        operator was set up (see :func:`probe`)."""
        out: dict[str, object] = {**self.top.estimates(), "eigensolver": solver_settings(self.top),
                                  "loss": self.loss, "grad_norm": self.grad_norm}
        neg = self.most_negative
        if neg is not None:
            out["most_negative"] = {"eigenvalue": float(neg.eigenvalues[0]), "residual": float(neg.residuals[0]),
                                    "converged": neg.converged, "hvps": neg.hvps, "seconds": neg.seconds,
                                    "eigensolver": solver_settings(neg)}
        out["trace"] = None if self.trace is None else self.trace.to_dict()
        out["density"] = None if self.density is None else self.density.to_dict()
        out["settings"] = self.settings
        if self.per_layer is not None:
            out["per_layer"] = self.per_layer.to_dict()
        if self.sharpness is not None:
            out["sharpness"] = {name: result.to_dict() for name, result in self.sharpness.items()}
        return out


def solver_settings(result: EigenResult) -> dict[str, object]:
    """The eigen-solver's own record of ``result`` (method, block, steps, which, tol, seed, memory, ...);
    the product arithmetic is left to the operator's ``settings.product_precision``."""
    return {k: v for k, v in result.settings.items() if k != "product_precision"}


#: How :func:`probe` derives the seed of each estimate from ``ProbeSettings.seed`` (:func:`offset_seed`).
SEED_OFFSETS = {"top": 0, "most_negative": 1, "trace": 2, "density": 3, "sharpness": 4}


def derived_seeds(seed: int, parts: list[str]) -> dict[str, dict[str, object]]:
    """``{part: {"seed": s, "rule": "seed + offset"}}`` for the estimates ``parts`` of a probe with ``seed``.

    >>> derived_seeds(0, ["top", "trace"])
    {'top': {'seed': 0, 'rule': 'seed'}, 'trace': {'seed': 2, 'rule': 'seed + 2 (mod 2^64)'}}
    """
    return {part: {"seed": offset_seed(seed, SEED_OFFSETS[part]),
                   "rule": f"seed + {SEED_OFFSETS[part]} (mod 2^64)" if SEED_OFFSETS[part] else "seed"}
            for part in parts}


OPERATOR_NAMES = {"hessian": "Hessian", "ggn": "GGN", "ef": "empirical Fisher"}


def precision_note(precision: str, device: str, dtype: str) -> str | None:
    """A sentence when the product ``precision`` asked for cannot change anything where it runs: TF32 is a
    CUDA mode for float32 matrix products (none on a CPU, none for float64); else None."""
    if precision == "tf32" and not device.startswith("cuda"):
        return f"precision tf32 changes nothing on {device}: TF32 is a CUDA matmul mode; the arithmetic stays strict float32"
    if precision == "tf32" and dtype != "float32":
        return f"precision tf32 changes nothing for {dtype}: TF32 applies to float32 matrix products only"
    return None


def curvature_operator(objective: Objective, settings: ProbeSettings) -> LinearOperator:
    """The matrix the probe measures: the Hessian, the generalised Gauss–Newton or the empirical Fisher."""
    c = settings.curvature
    if settings.operator == "ggn":
        return GGNOperator(objective, block_size=c.block_size, precision=c.precision)
    if settings.operator == "ef":
        return EmpiricalFisherOperator(objective, block_size=c.block_size, precision=c.precision)
    return c.hessian(objective)


def probe(model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, y: Tensor,
          settings: ProbeSettings = ProbeSettings(), *, progress: Progress | None = None) -> ProbeReport:
    """Measure the Hessian of the mean ``loss_fn`` over ``(x, y)`` at the model's current parameters
    (or, with ``settings.operator``, its generalised Gauss–Newton ``"ggn"`` or empirical Fisher ``"ef"``).

    ``progress(stage, done, total)`` is called after every operator product, with ``total`` the
    stage's budget in HVPs (an upper bound for Lanczos, which usually stops earlier).
    """
    check_type("model", model, nn.Module, "a torch.nn.Module")
    if not callable(loss_fn):
        raise ConfigError(f"loss_fn must be callable (outputs, targets) -> loss, got {type(loss_fn).__name__}",
                          argument="loss_fn")
    check_type("x", x, Tensor, "a torch.Tensor")
    check_type("y", y, Tensor, "a torch.Tensor")
    check_type("settings", settings, ProbeSettings, "a ProbeSettings")
    if progress is not None and not callable(progress):
        raise ConfigError(f"progress must be callable or None, got {type(progress).__name__}", argument="progress")
    c = settings.curvature
    check_model_fits(model, loss_fn, x, y, name="the probe data", k=c.k)  # one pass on 2 examples first
    sharded = settings.shard == "fsdp" or is_sharded(model)
    if sharded and settings.sharpness:
        raise ConfigError("sharpness measures do not apply to a sharded model (they perturb whole parameter "
                          "vectors in one process)", argument="sharpness")
    if sharded and not is_sharded(model):
        shard_per_block(model)
    objective = Objective(model, loss_fn, (x, y), bn=c.bn, batch_size=settings.batch_size,
                          weight_precision=c.weight_precision, validate=not sharded)
    if c.k > objective.dim:
        raise ConfigError(f"k={c.k} exceeds the number of parameters ({objective.dim})", argument="k")
    op: LinearOperator
    how = "separate forward and backward passes"
    if sharded:
        op = ShardedHessianOperator(objective)
        loss, grad_norm = op.loss(), op.gradient_norm()
    elif isinstance(op := curvature_operator(objective, settings), HessianOperator):
        loss, gradient, how = op.loss_and_gradient()  # from the cached graphs when they are kept
        grad_norm = float(gradient.norm())
    else:
        loss, grad_norm = objective.loss(), float(objective.gradient().norm())
    max_iter = c.lanczos_steps(objective.dim)

    def stage(name: str, total: int) -> None:
        first = op.matvecs
        op.on_matmat = None if progress is None else (lambda: progress(name, op.matvecs - first, total))

    stage("top eigenvalues", max_iter)
    top = lanczos(op, k=c.k, which="LA", max_iter=max_iter, seed=settings.seed, block=c.block, **c.eigen_options())
    negative = trace = density = None
    if settings.negative:
        stage("most negative eigenvalue", max_iter)
        negative = lanczos(op, k=1, which="SA", max_iter=max_iter,
                           seed=offset_seed(settings.seed, SEED_OFFSETS["most_negative"]), return_eigenvectors=False,
                           **c.eigen_options())
    if settings.trace:
        stage("trace", c.trace_matvecs)
        trace = trace_estimator(c.trace_method)(op, c.trace_matvecs, seed=offset_seed(settings.seed, SEED_OFFSETS["trace"]),
                                                memory_budget=c.memory_budget)
    if settings.density:
        stage("density", settings.density_steps * settings.density_runs)
        density = slq_density(op, settings.density_steps, settings.density_runs, tol=settings.density_tol,
                              seed=offset_seed(settings.seed, SEED_OFFSETS["density"]), memory_budget=c.memory_budget)
    op.on_matmat = None
    layers = None
    if settings.per_layer:
        layers = per_layer_curvature(
            model, loss_fn, [(b.x, b.y) for b in objective.batches], groups=settings.layer_depth or "module",
            settings=c, trace=settings.trace, seed=settings.seed, progress=progress)
    sharpness = sharpness_measures(objective, settings) if settings.sharpness else None
    parts = ["top"] + [part for part, on in (("most_negative", settings.negative), ("trace", settings.trace),
                                             ("density", settings.density), ("sharpness", bool(sharpness))) if on]
    seeds = derived_seeds(settings.seed, parts)
    if settings.per_layer:
        seeds["per_layer"] = {"seed": settings.seed, "rule": "seed (Lanczos); seed + 2 (mod 2^64) for the trace "
                                                             "of each layer"}
    record = {**op.describe(), "operator": settings.operator, "shard": "fsdp" if sharded else settings.shard,
              "loss_and_gradient": how, "k": c.k, "tol": c.tol,
              "stop": c.stop, "max_iter": max_iter, "seed": settings.seed, "seeds": seeds,
              "trace_method": c.trace_method if settings.trace else None,
              "trace_matvecs": c.trace_matvecs if settings.trace else None,
              "sharpness": list(settings.sharpness) or None,
              "sharpness_settings": asdict(settings.sharpness_settings) if settings.sharpness else None}
    note = precision_note(c.precision, str(objective.device), str(objective.dtype).removeprefix("torch."))
    if note is not None:
        record["notes"] = [note]
    return ProbeReport(loss=loss, grad_norm=grad_norm, top=top, most_negative=negative, trace=trace,
                       density=density, settings=record, per_layer=layers, sharpness=sharpness)


def sharpness_measures(objective: Objective, settings: ProbeSettings) -> dict[str, SharpnessResult]:
    """The probe's sharpness measures, each with ``sharpness_settings`` but the seed derived from the probe's
    (``seed + 4``) and ``m`` only for the measures that take it."""
    base = replace(settings.sharpness_settings, seed=offset_seed(settings.seed, SEED_OFFSETS["sharpness"]))
    return {name: measure(name, objective, base if name in TAKES_M else replace(base, m=None))
            for name in settings.sharpness}
