"""Hessian-vector products of one batch's loss, three ways.

Each function returns ``w · H_b V`` for a block of probe vectors ``V`` given as rows ``(m, dim)``,
where ``H_b`` is the Hessian of batch ``b``'s mean loss and ``w = n_b / N`` its weight:

* ``fwd-rev``: forward-mode derivative of the gradient, ``H v = d/dt ∇ℓ(θ + t v)|_{t=0}``
  (``torch.func.jvp`` of ``torch.func.grad``), vmapped over the block: one pass serves m probes.
* ``rev-rev``: double backward (Pearlmutter), ``H v = ∇_θ ⟨∇ℓ(θ), v⟩``; one graph per batch
  serves the whole block (and, with :class:`HessianOperator`'s ``cache_graphs``, every later
  product at the same parameters).
* ``fd``: central differences of gradients, ``H v ≈ (∇ℓ(θ + εv) − ∇ℓ(θ − εv)) / (2ε)``, with
  ``ε = h (1 + ‖θ‖) / ‖v‖`` and ``h`` about the cube root of the parameters' machine epsilon
  (truncation error ``O(ε²)``, rounding ``O(eps/ε)``). The points ``θ ± εv`` are formed in float32
  and rounded once to the parameters' dtype (bfloat16 weights stay bfloat16); the difference is
  taken in float32. Only first derivatives are needed, so it runs where the others cannot.

``rev-rev`` and ``fd`` take their gradients by backward passes inside
:meth:`Objective.within`, so activation-checkpointed layers recompute with the right parameters;
``fwd-rev`` uses ``torch.func`` transforms, which checkpointing does not support.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.func import grad, jvp, vmap

from sharpscope.curvature.operators import batches as structure
from sharpscope.curvature.operators.objective import Batch, Objective

HVPFn = Callable[[Objective, dict[str, Tensor], Batch, Tensor], Tensor]


_ZERO_TENSOR_ERROR = "ZeroTensors are immutable"


@torch.no_grad()  # no autograd record through parameters left out of ``params``; torch.func ignores it
def hvp_fwd_rev(objective: Objective, params: dict[str, Tensor], batch: Batch, rows: Tensor) -> Tensor:
    """Forward-over-reverse products for the rows of ``rows``; returns ``(m, dim)``.

    Some losses' backward formulas (``mse_loss`` in torch 2.13) write into the zero tangent that
    forward mode gives a constant such as the target, and fail ("ZeroTensors are immutable"). Then
    the batch's floating tensors enter ``jvp`` as inputs with materialised zero tangents, which
    changes no value; the objective records the work-around (``fwd_rev_workaround``) and keeps it.
    """
    if objective.fwd_rev_workaround is None:
        try:
            return _fwd_rev(objective, params, batch, rows, lift=False)
        except RuntimeError as err:
            if _ZERO_TENSOR_ERROR not in str(err):
                raise
            objective.fwd_rev_workaround = ("batch tensors given zero tangents: the loss's backward fails on "
                                            f"implicit zero tangents ({_ZERO_TENSOR_ERROR})")
    return _fwd_rev(objective, params, batch, rows, lift=True)


def _fwd_rev(objective: Objective, params: dict[str, Tensor], batch: Batch, rows: Tensor, *, lift: bool) -> Tensor:
    constants = [t for t in structure.leaves(batch.data) if t.is_floating_point()] if lift else []
    zeros = [torch.zeros_like(t) for t in constants]

    def loss(p: dict[str, Tensor], lifted: list[Tensor]) -> Tensor:
        if not lift:
            return objective.batch_loss(p, batch)
        supply = iter(lifted)
        data = structure.rebuild(batch.data, lambda t: next(supply) if t.is_floating_point() else t)
        return objective.batch_loss(p, Batch(data, batch.size))

    grad_fn = grad(loss)

    def one(v: Tensor) -> Tensor:
        tangent = jvp(grad_fn, (params, constants), (objective.unflatten(v), zeros))[1]
        return objective.flatten(tangent.values())

    if rows.shape[0] == 1:
        return one(rows[0])[None]
    return vmap(one)(rows)


@functools.cache
def compiled_fwd_rev() -> HVPFn:
    """:func:`hvp_fwd_rev` with its product traced by ``torch.compile`` (inductor), built once per process.

    The same function of the same numbers; only the kernels differ (fused, reordered sums), so it
    agrees with the eager product to rounding. Compiling takes seconds to a minute on the first call
    for each model, batch shape and block width. Forward over reverse only: ``torch.compile`` does
    not support the double backward of ``rev-rev``. The loss's zero-tangent work-around must be
    decided before the first compiled call (an eager product does it).
    """
    compiled = torch.compile(_fwd_rev, dynamic=False)

    @torch.no_grad()
    def product(objective: Objective, params: dict[str, Tensor], batch: Batch, rows: Tensor) -> Tensor:
        return compiled(objective, params, batch, rows, lift=objective.fwd_rev_workaround is not None)

    return product


@dataclass(frozen=True)
class GradientGraph:
    """One batch's gradient ``∇ℓ_b(θ)`` with its autograd graph kept for double backward."""

    leaves: list[Tensor]
    grads: list[Tensor]  # only the entries that depend on the parameters
    live: list[int]
    loss: Tensor  # ℓ_b(θ), detached: the value the graph was built from
    first: tuple[Tensor | None, ...]  # every entry of ∇ℓ_b (None where the loss does not depend on it)

    def gradient(self, objective: Objective) -> Tensor:
        """``∇ℓ_b(θ)`` as a flat vector (zeros for parameters the loss does not depend on)."""
        return objective.flatten(torch.zeros_like(p) if g is None else g.detach() for g, p in zip(self.first, self.leaves))


def gradient_graph(objective: Objective, params: dict[str, Tensor], batch: Batch) -> GradientGraph:
    """Forward and backward with ``create_graph=True`` on detached copies of the parameters."""
    return _graph_on(objective, {n: p.detach().requires_grad_(True) for n, p in params.items()}, batch)


def _graph_on(objective: Objective, params: dict[str, Tensor], batch: Batch) -> GradientGraph:
    """:func:`gradient_graph` with ``params`` as the leaves themselves."""
    leaves = list(params.values())
    with torch.enable_grad():
        loss = objective.batch_loss(params, batch)
        grads = torch.autograd.grad(loss, leaves, create_graph=True, allow_unused=True)
    live = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
    return GradientGraph(leaves, [grads[i] for i in live], live, loss.detach(), grads)


def measured_gradient_graph(objective: Objective, params: dict[str, Tensor],
                            batch: Batch) -> tuple[GradientGraph, int]:
    """:func:`gradient_graph` and the bytes it keeps alive: every tensor autograd saves for the
    double backward (counted once per storage, the batch and the parameters left out) plus the
    gradient itself."""
    skip = {t.untyped_storage().data_ptr() for t in (*structure.leaves(batch.data), *params.values())}
    seen: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        graph = gradient_graph(objective, params, batch)
    return graph, sum(seen.values()) + sum(g.numel() * g.element_size() for g in graph.grads)


def apply_graph(objective: Objective, graph: GradientGraph, rows: Tensor, *, keep: bool) -> Tensor:
    """``H_b v = ∇_θ ⟨∇ℓ_b, v⟩`` for each row by double backward; ``keep`` retains the graph after."""
    out = torch.zeros_like(rows)
    if not graph.live:  # the loss is at most linear in every selected parameter: H = 0
        return out
    with torch.enable_grad():
        for r in range(rows.shape[0]):
            v = list(objective.unflatten(rows[r]).values())
            hv = torch.autograd.grad(graph.grads, graph.leaves, grad_outputs=[v[i] for i in graph.live],
                                     retain_graph=keep or r + 1 < rows.shape[0], allow_unused=True)
            out[r] = objective.flatten(torch.zeros_like(p) if h is None else h for h, p in zip(hv, graph.leaves))
    return out


def hvp_rev_rev(objective: Objective, params: dict[str, Tensor], batch: Batch, rows: Tensor) -> Tensor:
    """Double-backward products; one forward/backward graph reused for every row, built and used
    inside :meth:`Objective.within` (checkpointed layers recompute with these parameters)."""
    leaves = {n: p.detach().requires_grad_(True) for n, p in params.items()}
    return objective.within(leaves, lambda: apply_graph(objective, _graph_on(objective, leaves, batch), rows, keep=False))


def fd_step(dtype: torch.dtype) -> float:
    """Relative step ``h`` for central differences: about ``eps^(1/3)`` of the dtype."""
    return float(torch.finfo(dtype).eps) ** (1.0 / 3.0)


@torch.no_grad()
def hvp_fd(objective: Objective, params: dict[str, Tensor], batch: Batch, rows: Tensor, *,
           h: float | None = None) -> Tensor:
    """Central finite-difference products (two gradients per probe) with relative step ``h`` (default
    :func:`fd_step` of the parameters' dtype)."""
    theta = objective.flatten(params.values())
    wide = torch.float64 if theta.dtype == torch.float64 else torch.float32
    base = theta.to(wide)
    scale = (fd_step(theta.dtype) if h is None else h) * (1.0 + float(base.norm()))
    out = torch.zeros_like(rows)
    for r in range(rows.shape[0]):
        v = rows[r].to(wide)
        norm = float(v.norm())
        if norm == 0:
            continue
        eps = scale / norm
        plus = objective.batch_gradient(objective.unflatten((base + eps * v).to(theta.dtype)), batch)
        minus = objective.batch_gradient(objective.unflatten((base - eps * v).to(theta.dtype)), batch)
        out[r] = ((plus.to(wide) - minus.to(wide)) / (2 * eps)).to(rows.dtype)
    return out


HVP_MODES: dict[str, HVPFn] = {"fwd-rev": hvp_fwd_rev, "rev-rev": hvp_rev_rev, "fd": hvp_fd}
