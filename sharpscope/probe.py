"""Probe one model: top eigenvalues, the most negative one, trace, spectral density and per-layer curvature.

This is the library function behind ``sharpscope probe``; the report serialises to the JSON the
CLI prints, with every measurement's cost and the settings that produced it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from torch import Tensor, nn

from sharpscope.curvature import (
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
from sharpscope.curvature.trace import check_trace_budget
from sharpscope.errors import ConfigError
from sharpscope.models.inputs import check_model_fits
from sharpscope.validation import check_int, check_seed, check_tol, offset_seed

Progress = Callable[[str, int, int], None]
OPERATORS = ("hessian", "ggn", "ef")


@dataclass(frozen=True)
class ProbeSettings:
    """What to measure and how; recorded with the report."""

    k: int = 1
    tol: float = 1e-3
    max_iter: int | None = None
    stop: Literal["eigenvalue", "residual"] = "residual"
    negative: bool = False
    trace: bool = False
    trace_method: Literal["hutch++", "hutchinson"] = "hutch++"
    trace_matvecs: int = 99
    density: bool = False
    density_steps: int = 90
    density_runs: int = 10
    density_tol: float | None = None  # SLQ adaptive stopping (see slq_density's tol); None: fixed steps
    bn: Literal["eval", "batch"] = "eval"
    batch_size: int | None = 1000
    hvp_mode: Literal["auto", "fwd-rev", "rev-rev", "fd"] = "auto"
    block_size: int = 8
    allow_tf32: bool = False
    cache_graphs: bool | Literal["auto"] = "auto"
    seed: int = 0
    per_layer: bool = False
    layer_depth: int | None = None
    operator: Literal["hessian", "ggn", "ef"] = "hessian"

    def __post_init__(self) -> None:
        if self.operator not in OPERATORS:
            raise ConfigError(f"operator must be one of {', '.join(OPERATORS)}; got {self.operator!r}")
        if self.operator != "hessian":
            hessian_only = {"per-layer": self.per_layer, "cache-graphs": self.cache_graphs is True,
                            f"hvp-mode {self.hvp_mode}": self.hvp_mode != "auto"}
            used = [name for name, on in hessian_only.items() if on]
            if used:
                raise ConfigError(f"{', '.join(used)} appl{'ies' if len(used) == 1 else 'y'} to the Hessian only, "
                                  f"not to operator {self.operator}")
        for name in ("k", "trace_matvecs", "density_steps", "density_runs", "block_size"):
            check_int(name.replace("_", "-"), getattr(self, name), low=1)
        check_int("batch-size", self.batch_size, low=1, optional=True)
        check_int("max-iter", self.max_iter, low=1, optional=True)  # 0 would silently mean "the default"
        check_tol("tol", self.tol)
        if self.density_tol is not None:
            check_tol("density-tol", self.density_tol)
        check_seed("seed", self.seed)
        if self.trace:
            check_trace_budget(self.trace_method, self.trace_matvecs)
        if self.stop not in ("eigenvalue", "residual"):
            raise ConfigError(f"stop must be 'eigenvalue' or 'residual', got {self.stop!r}")
        trace_estimator(self.trace_method)  # a clear error for an unknown name
        if self.layer_depth is not None and (self.layer_depth < 1 or not self.per_layer):
            raise ConfigError(f"layer-depth must be a positive depth and needs per-layer, got {self.layer_depth} "
                              f"with per-layer {'on' if self.per_layer else 'off'}")


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

    def to_dict(self) -> dict[str, object]:
        top = self.top.to_dict()
        out: dict[str, object] = {
            "eigenvalues": top["eigenvalues"], "residuals": top["residuals"], "error_bounds": top["error_bounds"],
            "converged": top["converged"],
            "hvps": top["hvps"], "seconds": top["seconds"], "loss": self.loss, "grad_norm": self.grad_norm,
        }
        if self.most_negative is not None:
            neg = self.most_negative.to_dict()
            out["most_negative"] = {"eigenvalue": neg["eigenvalues"][0], "residual": neg["residuals"][0],
                                    "converged": neg["converged"], "hvps": neg["hvps"], "seconds": neg["seconds"]}
        out["trace"] = None if self.trace is None else self.trace.to_dict()
        out["density"] = None if self.density is None else self.density.to_dict()
        out["settings"] = self.settings
        if self.per_layer is not None:
            out["per_layer"] = self.per_layer.to_dict()
        return out


def curvature_operator(objective: Objective, settings: ProbeSettings) -> LinearOperator:
    """The matrix the probe measures: the Hessian, the generalised Gauss–Newton or the empirical Fisher."""
    if settings.operator == "ggn":
        return GGNOperator(objective, block_size=settings.block_size, allow_tf32=settings.allow_tf32)
    if settings.operator == "ef":
        return EmpiricalFisherOperator(objective, block_size=settings.block_size, allow_tf32=settings.allow_tf32)
    return HessianOperator(objective, mode=settings.hvp_mode, block_size=settings.block_size,
                           allow_tf32=settings.allow_tf32, cache_graphs=settings.cache_graphs)


def probe(model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, y: Tensor,
          settings: ProbeSettings = ProbeSettings(), *, progress: Progress | None = None) -> ProbeReport:
    """Measure the Hessian of the mean ``loss_fn`` over ``(x, y)`` at the model's current parameters
    (or, with ``settings.operator``, its generalised Gauss–Newton ``"ggn"`` or empirical Fisher ``"ef"``).

    ``progress(stage, done, total)`` is called after every operator product, with ``total`` the
    stage's budget in HVPs (an upper bound for Lanczos, which usually stops earlier).
    """
    check_model_fits(model, loss_fn, x, y, name="the probe data", k=settings.k)  # one pass on 2 examples first
    objective = Objective(model, loss_fn, (x, y), bn=settings.bn, batch_size=settings.batch_size)
    if settings.k > objective.dim:
        raise ConfigError(f"k={settings.k} exceeds the number of parameters ({objective.dim})")
    op = curvature_operator(objective, settings)
    loss, grad_norm = objective.loss(), float(objective.gradient().norm())
    max_iter = settings.max_iter or min(objective.dim, max(100, 20 * settings.k))

    def stage(name: str, total: int) -> None:
        first = op.matvecs
        op.on_matmat = None if progress is None else (lambda: progress(name, op.matvecs - first, total))

    stage("top eigenvalues", max_iter)
    top = lanczos(op, k=settings.k, which="LA", tol=settings.tol, max_iter=max_iter, seed=settings.seed,
                  stop=settings.stop)
    negative = trace = density = None
    if settings.negative:
        stage("most negative eigenvalue", max_iter)
        negative = lanczos(op, k=1, which="SA", tol=settings.tol, max_iter=max_iter,
                           seed=offset_seed(settings.seed, 1), return_eigenvectors=False, stop=settings.stop)
    if settings.trace:
        stage("trace", settings.trace_matvecs)
        trace = trace_estimator(settings.trace_method)(op, settings.trace_matvecs, seed=offset_seed(settings.seed, 2))
    if settings.density:
        stage("density", settings.density_steps * settings.density_runs)
        density = slq_density(op, settings.density_steps, settings.density_runs, tol=settings.density_tol,
                              seed=offset_seed(settings.seed, 3))
    op.on_matmat = None
    layers = None
    if settings.per_layer:
        layers = per_layer_curvature(
            model, loss_fn, [(b.x, b.y) for b in objective.batches], groups=settings.layer_depth or "module",
            k=settings.k, tol=settings.tol, max_iter=settings.max_iter, trace=settings.trace,
            trace_method=settings.trace_method, trace_matvecs=settings.trace_matvecs, bn=settings.bn,
            hvp_mode=settings.hvp_mode, block_size=settings.block_size, allow_tf32=settings.allow_tf32,
            cache_graphs=settings.cache_graphs, seed=settings.seed, progress=progress)
    record = {**op.describe(), "operator": settings.operator, "k": settings.k, "tol": settings.tol,
              "stop": settings.stop, "max_iter": max_iter, "seed": settings.seed,
              "trace_method": settings.trace_method if settings.trace else None,
              "trace_matvecs": settings.trace_matvecs if settings.trace else None}
    return ProbeReport(loss=loss, grad_norm=grad_norm, top=top, most_negative=negative, trace=trace,
                       density=density, settings=record, per_layer=layers)
