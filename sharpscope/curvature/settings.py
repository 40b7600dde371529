"""How a curvature estimate is computed: one frozen, validated set of settings shared by
:func:`sharpscope.probe.probe`, :class:`~sharpscope.track.SharpnessTracker`, a training run's
:class:`~sharpscope.track.TrainConfig` and :func:`~sharpscope.curvature.per_layer_curvature`.

* Lanczos: the top ``k`` eigenvalues, stopped when the relative measure chosen by ``stop`` is below
  ``tol`` (:func:`~sharpscope.curvature.algorithms.lanczos`), after at most ``max_iter`` steps; None means
  :func:`default_max_iter` ``= min(d, max(100, 20k))`` for ``d`` parameters.
* trace: ``trace_method`` (Hutch++ or Hutchinson) with a budget of ``trace_matvecs`` products.
* the objective and its products: BatchNorm mode ``bn``, Hessian-vector product mode ``hvp_mode``,
  ``block_size`` probe vectors per pass, the arithmetic (``precision``), compiled products
  (``compile``) and the gradient-graph cache (``cache_graphs``) of
  :class:`~sharpscope.curvature.HessianOperator`; ``block``, Lanczos' own block of vectors for ``k > 1``.

What to measure (a trace or not, a density, per layer) and the seed of the random vectors stay
with each caller: they differ between a probe and a tracker, and the seed differs between runs
that share these settings.

Example::

    >>> settings = CurvatureSettings(k=2, tol=1e-4)
    >>> settings.lanczos_steps(dim=50), settings.replace(max_iter=30).lanczos_steps(dim=50)
    (50, 30)
    >>> CurvatureSettings(hvp_mode="forward")
    Traceback (most recent call last):
    ...
    sharpscope.errors.ConfigError: hvp_mode must be 'auto', 'fwd-rev', 'rev-rev' or 'fd', got 'forward'
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, get_args

from sharpscope.curvature.algorithms.krylov_basis import BASIS_LOCATIONS, BasisLocation
from sharpscope.curvature.algorithms.lanczos import DEFAULT_GUARDS, default_max_iter
from sharpscope.curvature.algorithms.ritz import DEFAULT_STOP, Stop
from sharpscope.curvature.algorithms.trace import check_trace_budget
from sharpscope.curvature.memory import MemoryBudgetSpec, parse_budget
from sharpscope.curvature.operators.hessian import HessianOperator, HVPMode
from sharpscope.curvature.operators.objective import BNMode, Objective, WeightPrecision
from sharpscope.curvature.operators.precision import PRECISIONS, ProductPrecision
from sharpscope.errors import ConfigError
from sharpscope.validation import check_bool, check_choice, check_int, check_tol

__all__ = ["CacheGraphs", "CurvatureSettings", "DEFAULTS", "RUN_DEFAULTS", "TraceMethod", "default_max_iter"]

TraceMethod = Literal["hutch++", "hutchinson"]
CacheGraphs = bool | Literal["auto"]


@dataclass(frozen=True)
class CurvatureSettings:
    """How eigenvalues and traces are computed (see the module docstring); checked on creation.

    Args:
        k: number of top eigenvalues.
        tol: relative tolerance of Lanczos' stopping rule, in ``(0, 1)``.
        max_iter: Lanczos step limit (None: :func:`default_max_iter`).
        stop: ``"residual"`` bounds the relative Ritz residual ``‖Hy − θy‖/|θ|``; ``"eigenvalue"``
            the estimated relative eigenvalue error (fewer products, can stop inside a near pair).
        trace_method, trace_matvecs: the trace estimator and its budget of products (at least 6
            for Hutch++, 2 for Hutchinson).
        bn: BatchNorm in the objective: ``"eval"`` (running statistics) or ``"batch"``.
        hvp_mode: ``"auto"`` (the faster exact mode: by timing, kept on disk per architecture and machine; ``rev-rev``
            without timing when the graph cache is used), ``"fwd-rev"``, ``"rev-rev"`` or ``"fd"``.
        block_size: probe vectors per operator pass.
        precision: product arithmetic: ``"strict"`` IEEE float32 (the default), ``"tf32"`` (CUDA TF32
            matmuls, about 1e-3 relative error) or ``"bf16"`` (bfloat16 autocast); any but strict
            measures its deviation from a strict product once and records it with every result.
        compile: ``torch.compile`` the forward-over-reverse product (opt-in: compiling costs tens of
            seconds; its deviation from the eager product is recorded the same way).
        block: Lanczos block size for ``k > 1`` (None: single-vector Lanczos, the default; ``"auto"``:
            ``k`` capped at ``block_size`` and at least 2, so block Lanczos even for ``k = 1``), see
            :func:`~sharpscope.curvature.algorithms.lanczos`.
        weight_precision: float16/bfloat16 weights: ``"upcast"`` (the default) computes on float32 copies
            (exact products, 4 bytes more per parameter); ``"native"`` keeps their dtype, with
            finite-difference products under ``hvp_mode="auto"`` (double backward with ``cache_graphs=True``)
            whose error against exact products of a float32 copy is measured once and recorded (see
            :class:`~sharpscope.curvature.HessianOperator`). No effect on float32/float64 weights.
        cache_graphs: keep every batch's gradient graph between products (``rev-rev``): True, False or
            ``"auto"`` (the default: when the graphs fit in half the free memory; the choice is
            recorded). The graphs hold until the parameters change or the operator releases them (a
            tracker releases them after each measurement, so training keeps its memory).
        guards: Ritz pairs beyond the ``k`` wanted ones that must converge too before Lanczos stops
            (so that an extreme eigenvalue the Krylov space has not found yet is not passed over).
        memory_budget: the vectors an algorithm may hold: None (half the free memory), bytes, or a
            string such as ``"24 vectors"`` or ``"8GiB"``; Lanczos restarts within it, SLQ runs in
            chunks or with local re-orthogonalisation, Hutch++ shrinks its sketch (all recorded).
        basis_location: ``"device"`` or ``"host"``: where Lanczos keeps its Krylov basis (host memory
            beside a GPU model; see :func:`~sharpscope.curvature.lanczos`).
    """

    k: int = 1
    tol: float = 1e-3
    max_iter: int | None = None
    stop: Stop = DEFAULT_STOP
    trace_method: TraceMethod = "hutch++"
    trace_matvecs: int = 99
    bn: BNMode = "eval"
    hvp_mode: HVPMode = "auto"
    block_size: int = 8
    precision: ProductPrecision = "strict"
    compile: bool = False
    block: int | Literal["auto"] | None = None
    cache_graphs: CacheGraphs = "auto"
    guards: int = DEFAULT_GUARDS
    memory_budget: MemoryBudgetSpec = None
    basis_location: BasisLocation = "device"
    weight_precision: WeightPrecision = "upcast"

    def __post_init__(self) -> None:
        check_int("k", self.k, low=1)
        check_tol("tol", self.tol)
        check_int("max_iter", self.max_iter, low=1, optional=True)  # 0 would silently mean "the default"
        check_choice("stop", self.stop, get_args(Stop))
        check_choice("trace_method", self.trace_method, get_args(TraceMethod))
        check_trace_budget(self.trace_method, self.trace_matvecs, name="trace_matvecs")
        check_choice("bn", self.bn, get_args(BNMode))
        check_choice("hvp_mode", self.hvp_mode, get_args(HVPMode))
        check_int("block_size", self.block_size, low=1)
        check_choice("precision", self.precision, PRECISIONS)
        check_bool("compile", self.compile)
        if self.block != "auto":
            check_int("block", self.block, low=1, optional=True)
        check_choice("cache_graphs", self.cache_graphs, (True, False, "auto"))
        check_int("guards", self.guards, low=0)
        parse_budget(self.memory_budget)
        check_choice("basis_location", self.basis_location, BASIS_LOCATIONS)
        check_choice("weight_precision", self.weight_precision, get_args(WeightPrecision))
        if self.cache_graphs is True and self.hvp_mode not in ("rev-rev", "auto"):
            raise ConfigError(f"cache_graphs=True needs hvp_mode 'rev-rev' or 'auto', got {self.hvp_mode!r}",
                              argument="cache_graphs")

    def hessian(self, objective: Objective) -> HessianOperator:
        """The Hessian of ``objective`` with these product settings."""
        return HessianOperator(objective, mode=self.hvp_mode, block_size=self.block_size, precision=self.precision,
                               compile=self.compile, cache_graphs=self.cache_graphs)

    def eigen_options(self) -> dict[str, Any]:
        """The keyword arguments of :func:`~sharpscope.curvature.lanczos` these settings fix (every
        caller adds its own ``k``, ``which``, seed and start vector)."""
        return {"tol": self.tol, "stop": self.stop, "guards": self.guards, "memory_budget": self.memory_budget,
                "basis": self.basis_location}

    def lanczos_steps(self, dim: int, k: int | None = None) -> int:
        """``max_iter``, or :func:`default_max_iter` for ``dim`` parameters and ``k`` (default ``self.k``)."""
        return self.max_iter if self.max_iter is not None else default_max_iter(dim, self.k if k is None else k)

    def replace(self, **changes: Any) -> CurvatureSettings:
        """A copy with ``changes`` (checked like a new one)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The settings as a JSON-ready dict (field name → value)."""
        return dataclasses.asdict(self)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The settings' names, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, d: Any, *, base: CurvatureSettings | None = None) -> CurvatureSettings:
        """``base`` (default: the class defaults) with the keys of the mapping ``d`` replaced; an unknown
        key raises :class:`ConfigError` listing the valid ones."""
        if not isinstance(d, dict):
            raise ConfigError(f"curvature must be a dict of settings ({', '.join(cls.field_names())}), got {d!r}",
                              argument="curvature")
        unknown = sorted(set(d) - set(cls.field_names()))
        if unknown:
            raise ConfigError(f"unknown curvature setting(s) {unknown}; valid: {', '.join(cls.field_names())}",
                              argument="curvature")
        return (base or cls()).replace(**d)


#: The class defaults, those of a probe (:class:`~sharpscope.probe.ProbeSettings`),
#: :class:`~sharpscope.track.SharpnessTracker` and :func:`~sharpscope.curvature.per_layer_curvature`.
DEFAULTS = CurvatureSettings()

#: The defaults of a training run (:class:`~sharpscope.track.TrainConfig`): one fixed product mode,
#: so that a run's records are reproducible to the last bit.
RUN_DEFAULTS = CurvatureSettings(hvp_mode="rev-rev")
