"""Per-layer and per-block curvature: the Hessian restricted to one group of parameters at a time.

For a group ``ℓ`` of parameters (a layer, a block, or any user-chosen set) the measured operator is
the *diagonal block* ``H_ℓℓ = ∇²_{θ_ℓ} L(θ)`` of the full Hessian: the other parameters are held
fixed, so the cross-layer blocks ``H_ℓm`` (``ℓ ≠ m``) are excluded. Two consequences that hold for
any symmetric ``H`` and are useful checks:

* ``λ_max(H_ℓℓ) ≤ λ_max(H)`` (a Rayleigh quotient over a subspace), so no layer is sharper than the
  whole network, and the layers' values need not add up to it;
* ``Σ_ℓ tr(H_ℓℓ) = tr(H)`` when the groups partition the parameters.

Each group gets its own :class:`Objective` (``params=`` the group's names) over the *same* probe
batches, its own :class:`HessianOperator`, :func:`lanczos` for the top eigenvalues and, on request,
a trace estimator. A product on a group costs about one full product (the whole network is
evaluated), so a probe of ``G`` groups costs about ``G`` times one probe.

Example (two independent quadratics: the blocks are exact)::

    >>> import torch
    >>> from torch import nn
    >>> class TwoLayers(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.a, self.b = nn.Linear(2, 1, bias=False), nn.Linear(3, 1, bias=False)
    ...     def forward(self, x):
    ...         return torch.cat([self.a.weight, self.b.weight], 1).expand(len(x), -1)
    >>> scales = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0], dtype=torch.float64)
    >>> loss = lambda out, t: 0.5 * (scales * out**2).sum(1).mean()
    >>> x, y = torch.zeros(4, 1, dtype=torch.float64), torch.zeros(4, dtype=torch.long)
    >>> res = per_layer_curvature(TwoLayers().double(), loss, (x, y), settings=CurvatureSettings(tol=1e-10))
    >>> [(row.name, round(float(row.top.eigenvalues[0]), 6)) for row in res.rows]
    [('a', 2.0), ('b', 5.0)]
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from sharpscope.curvature.algorithms.lanczos import lanczos
from sharpscope.curvature.algorithms.trace import trace_estimator
from sharpscope.curvature.operators.hessian import HessianOperator
from sharpscope.curvature.operators.objective import LossFn, Objective, ParamSelector, select_parameters
from sharpscope.curvature.results import EigenResult, TraceResult, float_list
from sharpscope.curvature.settings import DEFAULTS, CurvatureSettings
from sharpscope.errors import ConfigError
from sharpscope.validation import check_bool, check_seed, check_type, offset_seed

LayerGrouping = Literal["module"] | int | Mapping[str, ParamSelector]
Progress = Callable[[str, int, int], None]


def _owner(name: str, depth: int | None) -> str:
    """The group of parameter ``name``: its module path cut to ``depth`` components (all when None);
    a parameter of the root module is its own group."""
    module = name.split(".")[:-1]
    key = ".".join(module if depth is None else module[:depth])
    return key or name


def parameter_groups(model: nn.Module, groups: LayerGrouping = "module") -> dict[str, list[str]]:
    """Trainable parameter names grouped into layers, blocks or user groups, in model order.

    * ``"module"``: by the module that owns the parameters, weight and bias together
      (``"features.0.weight"``, ``"features.0.bias"`` → ``"features.0"``).
    * an integer ``d ≥ 1``: blocks named by the first ``d`` components of the module path
      (``"layer1.0.conv1.weight"`` → ``"layer1"`` for ``d = 1``, ``"layer1.0"`` for ``d = 2``).
    * a mapping ``{name: selector}``: user groups; each selector is a glob, a list of globs or a
      predicate ``(name, param) -> bool``, as ``Objective(params=...)`` takes. Groups may overlap.

    Parameters directly on the root module form their own groups, named after the parameter.
    """
    if isinstance(groups, Mapping):
        if not groups:
            raise ConfigError("layer groups: the mapping {name: globs} is empty", argument="groups")
        out: dict[str, list[str]] = {}
        for name, selector in groups.items():
            if selector is None:
                raise ConfigError(f"layer group {name!r} has no selector (give a glob, a list of globs or a predicate)",
                                  argument="groups")
            try:
                out[str(name)] = list(select_parameters(model, selector))
            except ConfigError as e:
                raise ConfigError(f"layer group {name!r}: {e}", argument="groups") from None
        return out
    if isinstance(groups, bool) or not (groups == "module" or isinstance(groups, int) and groups >= 1):
        raise ConfigError(f"layer grouping must be 'module', a positive depth or a mapping {{name: globs}}, "
                          f"got {groups!r}", argument="groups")
    depth = None if groups == "module" else int(groups)
    out = {}
    for name in select_parameters(model, None):
        out.setdefault(_owner(name, depth), []).append(name)
    return out


@dataclass(frozen=True)
class LayerCurvature:
    """Curvature of one group's diagonal Hessian block: top eigenvalues (with Ritz residuals) and
    optionally the trace ± standard error; ``hvps`` and ``seconds`` cover both; ``hvp_mode`` and
    ``cache_graphs`` are the product mode and graph cache its operator used (as chosen under ``"auto"``)."""

    name: str
    parameters: tuple[str, ...]
    numel: int
    top: EigenResult
    trace: TraceResult | None
    hvps: int
    seconds: float
    hvp_mode: str
    cache_graphs: bool | str

    def to_dict(self) -> dict[str, object]:
        """JSON-ready row: the group, its eigenvalues, residuals, trace ± stderr, cost and product settings
        (eigenvectors left out)."""
        return {"name": self.name, "parameters": list(self.parameters), "numel": self.numel,
                "eigenvalues": float_list(self.top.eigenvalues), "residuals": float_list(self.top.residuals),
                "converged": self.top.converged,
                "trace": None if self.trace is None else {"estimate": self.trace.estimate, "stderr": self.trace.stderr,
                                                          "num_samples": int(self.trace.samples.numel())},
                "hvps": self.hvps, "seconds": self.seconds, "hvp_mode": self.hvp_mode,
                "cache_graphs": self.cache_graphs}


@dataclass(frozen=True)
class PerLayerCurvature:
    """One :class:`LayerCurvature` row per group, the grouping used, total cost and settings."""

    rows: tuple[LayerCurvature, ...]
    grouping: str
    hvps: int
    seconds: float
    settings: dict[str, object] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready table: the grouping, one row per group, total cost and settings."""
        return {"grouping": self.grouping, "layers": [row.to_dict() for row in self.rows], "hvps": self.hvps,
                "seconds": self.seconds, "settings": self.settings}


def _grouping_name(groups: LayerGrouping) -> str:
    if isinstance(groups, Mapping):
        return "custom"
    return "module" if groups == "module" else f"depth={groups}"


def _report(op: HessianOperator, progress: Progress | None, stage: str, total: int) -> None:
    """Call ``progress(stage, products so far in this stage, total)`` after each of ``op``'s products."""
    first = op.matvecs
    op.on_matmat = None if progress is None else (lambda: progress(stage, op.matvecs - first, total))


def per_layer_curvature(model: nn.Module, loss_fn: LossFn, data: object, *, groups: LayerGrouping = "module",
                        settings: CurvatureSettings = DEFAULTS, trace: bool = False, batch_size: int | None = None,
                        seed: int = 0, progress: Progress | None = None) -> PerLayerCurvature:
    """Top-``k`` eigenvalues (and, with ``trace``, the trace) of each group's diagonal Hessian block.

    ``groups`` is read by :func:`parameter_groups`; the objective is the mean ``loss_fn`` over
    ``data`` as in :class:`Objective` (``settings.bn``, ``batch_size``). ``settings`` says how each
    block is measured (:class:`~sharpscope.curvature.CurvatureSettings`; by default each group's gradient
    graphs are cached when they fit, as in a probe). A group with fewer than ``k`` parameters gets as many
    eigenvalues as it has parameters, and a group measured for one eigenvalue takes single-vector Lanczos
    whatever ``settings.block``. Lanczos starts from ``seed`` and the trace probes from ``seed + 2`` in every group
    (the seeds of :func:`sharpscope.probe.probe`, so a single group holding every parameter
    reproduces a probe). ``progress(stage, done, total)`` is called after every product, one stage
    per group and measurement.
    """
    check_type("settings", settings, CurvatureSettings, "a CurvatureSettings")
    check_bool("trace", trace)
    check_seed("seed", seed)
    estimator = trace_estimator(settings.trace_method)
    start = time.perf_counter()
    names = parameter_groups(model, groups)
    full = Objective(model, loss_fn, data, bn=settings.bn, batch_size=batch_size, weight_precision=settings.weight_precision)
    batches = [(b.x, b.y) for b in full.batches]
    rows = []
    for group, params in names.items():
        t0 = time.perf_counter()
        objective = Objective(model, loss_fn, batches, bn=settings.bn, params=params, validate=False,
                              weight_precision=settings.weight_precision)
        op = settings.hessian(objective)
        kk = min(settings.k, objective.dim)
        iters = settings.lanczos_steps(objective.dim, kk)

        # no_grad: the parameters outside the group still require grad, and products taken with
        # torch.func (fwd-rev, fd) would otherwise be recorded by autograd through them
        with torch.no_grad():
            _report(op, progress, f"{group}: top eigenvalues", iters)
            top = lanczos(op, kk, which="LA", max_iter=iters, seed=seed, return_eigenvectors=False,
                          block=settings.block if kk > 1 else None, **settings.eigen_options())
            tr = None
            if trace:
                _report(op, progress, f"{group}: trace", settings.trace_matvecs)
                tr = estimator(op, settings.trace_matvecs, seed=offset_seed(seed, 2), memory_budget=settings.memory_budget)
        op.on_matmat = None
        rows.append(LayerCurvature(name=group, parameters=tuple(params), numel=objective.dim, top=top, trace=tr,
                                   hvps=op.matvecs, seconds=time.perf_counter() - t0, hvp_mode=op.mode,
                                   cache_graphs=op.graph_cache))
    settings_record = {
        **full.describe(), "grouping": _grouping_name(groups), "k": settings.k, "tol": settings.tol,
        "stop": settings.stop, "max_iter": settings.max_iter,
        "trace_method": settings.trace_method if trace else None,
        "trace_matvecs": settings.trace_matvecs if trace else None, "hvp_mode_requested": settings.hvp_mode,
        "seed": seed, "blocks": "diagonal (cross-layer terms excluded)"}
    return PerLayerCurvature(rows=tuple(rows), grouping=_grouping_name(groups), hvps=sum(r.hvps for r in rows),
                             seconds=time.perf_counter() - start, settings=settings_record)
