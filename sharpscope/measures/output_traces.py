"""Traces through the model's outputs: the Jacobian trace and the Gauss–Newton trace.

* Jacobian trace (the regulariser of Damian et al. 2021): ``(1/N) Σ_i ‖∂f(x_i)/∂w‖_F² =
  (1/N) Σ_b ‖J_b‖_F²``, ``J_b`` the Jacobian of batch ``b``'s outputs (``n_b·C`` rows). It is the
  Gauss–Newton matrix of the loss ``ℓ_b = (1/n_b) Σ_i ½‖f_i‖²``, i.e. output Hessian ``I/n_b``.
* GGN trace: ``tr G = Σ_b (n_b/N) tr(J_bᵀ H_b J_b)``, ``H_b = ∇²_f ℓ_b``.

``trace="exact"`` computes them exactly, in one of two ways (recorded as ``details["method"]``):

* ``"exact per-example"``, when the examples of a batch are independent (``(x, y)`` pair batches, and
  no BatchNorm on batch statistics): each example's Jacobian ``J_i`` (``C`` rows) by ``torch.func.jacrev``
  on that example alone, vectorised over ``max(1, block // C)`` examples, so the cost is ``C`` reverse
  passes over the probe set. For the GGN, ``H_b``'s diagonal block ``H_ii`` comes from output-space
  products ``H_b e_k`` and ``tr(J_iᵀ H_ii J_i) = Σ H_ii ⊙ (J_i J_iᵀ)``; if ``H_b`` has a block off its
  diagonal above round-off (a loss that couples examples) the batch is taken the other way.
* ``"exact batch rows"`` otherwise: every row of ``J_b`` by a reverse pass of the whole batch on a
  one-hot output cotangent ``e_k`` (``r_k = J_bᵀ e_k``, ``block`` at a time), ``‖J_b‖_F² = Σ_k ‖r_k‖²``
  and ``tr(J_bᵀ H_b J_b) = Σ_k r_kᵀ (J_bᵀ H_b e_k)``. It carries any coupling of the examples (BatchNorm
  on batch statistics) but costs ``n_b·C`` (GGN: ``2 n_b·C``) reverse passes of the whole batch.

``"hutchinson"``/``"hutch++"`` estimate the same traces from ``matvecs`` products ``J_bᵀ M_b J_b v``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor
from torch.func import grad, jacrev, vjp, vmap

from sharpscope.curvature.algorithms.trace import trace_estimator
from sharpscope.curvature.operators.gauss_newton import GGNOperator, OutputCurvatureOperator, batch_outputs
from sharpscope.curvature.operators.objective import Batch, Objective
from sharpscope.errors import ConfigError
from sharpscope.measures.perturbed import Counter, MeasureOutput
from sharpscope.measures.settings import SharpnessSettings

#: Output elements (rows of all ``J_b``) above which the exact traces are refused: each costs a reverse pass.
MAX_EXACT_ROWS = 200_000


class JacobianGramOperator(OutputCurvatureOperator):
    """``v -> (1/N) Σ_b J_bᵀ J_b v``, whose trace is the Jacobian trace (output product ``U / n_b``)."""

    name = "jacobian-gram"

    def _output_product(self, out: Tensor, batch: Batch, U: Tensor, context: object = None) -> Tensor:
        return U / batch.size


def _rows(out: Tensor, start: int, stop: int) -> Tensor:
    """One-hot cotangents ``e_k`` for ``k`` in ``[start, stop)``, shaped like ``out``."""
    eye = torch.zeros(stop - start, out.numel(), dtype=out.dtype, device=out.device)
    eye[torch.arange(stop - start), torch.arange(start, stop)] = 1
    return eye.reshape(stop - start, *out.shape)


def _squared(r: dict[str, Tensor]) -> Tensor:
    return sum((t.reshape(t.shape[0], -1) ** 2).sum() for t in r.values())  # type: ignore[return-value]


def _dot(r: dict[str, Tensor], s: dict[str, Tensor]) -> Tensor:
    return sum((r[n] * s[n]).sum() for n in r)  # type: ignore[return-value]


def _output_hessian(objective: Objective, out: Tensor, batch: Batch) -> Callable[[Tensor], tuple[Tensor]]:
    """``E -> (H_b E,)``: products with the Hessian ``H_b = ∇²_f ℓ_b`` of the batch's loss in its outputs ``out``."""
    def loss_of(o: Tensor) -> Tensor:
        return objective.output_loss(o, batch)

    return vjp(grad(loss_of), out)[1]


@torch.no_grad()
def _exact_batch(objective: Objective, params: dict[str, Tensor], batch: Batch, ggn: bool, block: int,
                 counter: Counter) -> float:
    """``‖J_b‖_F²`` (``ggn`` False) or ``tr(J_bᵀ H_b J_b)`` (``ggn`` True) of one batch."""
    out, pullback = vjp(lambda p: batch_outputs(objective, p, batch), params)[:2]
    out = out.detach()
    counter.forwards += 1
    hessian = _output_hessian(objective, out, batch) if ggn else None
    total = torch.zeros((), dtype=torch.float64, device=out.device)
    for start in range(0, out.numel(), block):
        E = _rows(out, start, min(start + block, out.numel()))
        r = vmap(pullback)(E)[0]
        counter.backwards += E.shape[0]
        if hessian is None:
            total += _squared(r).double()
        else:
            s = vmap(pullback)(vmap(hessian)(E)[0])[0]
            counter.backwards += E.shape[0]
            total += _dot(r, s).double()
    return float(total)


def _independent(objective: Objective) -> bool:
    """Whether each example's outputs depend on that example only (per-example Jacobians are then exact)."""
    pairs = all(b.pair for b in objective.batches)
    return pairs and objective.count_fn is None and not (objective.bn == "batch" and objective.has_batchnorm)


@torch.no_grad()
def _per_example_batch(objective: Objective, params: dict[str, Tensor], batch: Batch, ggn: bool, block: int,
                       counter: Counter) -> float | None:
    """``Σ_i ‖J_i‖_F²`` or ``Σ_i tr(J_iᵀ H_ii J_i)`` over the examples of one batch; None when the loss
    couples examples (``H_b`` off its block diagonal), so the caller takes the batch rows instead."""

    def single(p: dict[str, Tensor], x: Tensor) -> Tensor:
        out = batch_outputs(objective, p, Batch((x[None], batch.y[:1]), 1.0))
        return out.reshape(-1)

    x = batch.x
    n = int(x.shape[0])
    hessian = None
    if ggn:
        out = batch_outputs(objective, params, batch).detach()
        counter.forwards += 1
        hessian = _output_hessian(objective, out, batch)
        width = out[0].numel()
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for start in range(0, n, block):
        stop = min(start + block, n)
        jac = vmap(jacrev(single), in_dims=(None, 0))(params, x[start:stop])  # {name: (c, C, *shape)}
        counter.forwards += 1
        rows = torch.cat([t.reshape(t.shape[0], t.shape[1], -1) for t in jac.values()], dim=2)  # (c, C, dim)
        counter.backwards += rows.shape[1]
        if hessian is None:
            total += (rows.double() ** 2).sum()
            continue
        E = _rows(out, start * width, stop * width)  # one-hot cotangents of these examples' outputs
        HE = vmap(hessian)(E)[0].reshape(stop - start, width, n, width)  # (c, C, n, C)
        index = torch.arange(stop - start, device=x.device)
        blocks = HE[index, :, start + index, :]  # (c, C, C): H_ii
        off = HE.clone()
        off[index, :, start + index, :] = 0
        if float(off.abs().max()) > 1e-10 * max(float(blocks.abs().max()), 1e-300):
            return None
        gram = rows @ rows.transpose(1, 2)  # J_i J_iᵀ
        total += (blocks * gram).sum().double()
    return float(total)


def _check_exact(objective: Objective, counter: Counter) -> None:
    rows = 0
    with objective.mode(), torch.no_grad():
        params = objective.param_values()
        for batch in objective.batches:
            rows += batch_outputs(objective, params, batch).numel()
            counter.forwards += 1
    if rows > MAX_EXACT_ROWS:
        raise ConfigError(f"trace='exact' needs one reverse pass per output element: {rows:,} here, over the limit "
                          f"of {MAX_EXACT_ROWS:,}; use trace='hutch++' (a stochastic estimate with its standard error)",
                          argument="trace")


def _output_trace(objective: Objective, settings: SharpnessSettings, counter: Counter, ggn: bool) -> MeasureOutput:
    if objective.closure is not None:
        raise ConfigError("the Jacobian and GGN traces need the model output; this objective's loss is a closure "
                          "(give loss_fn with forward=/output= instead)")
    if settings.trace == "exact":
        independent, checked = _independent(objective), False
        params = objective.param_values()
        total, methods = 0.0, set()
        with objective.mode():
            width = 1
            if independent:  # outputs per example, from one example of the first batch
                first = objective.batches[0]
                with torch.no_grad():
                    width = batch_outputs(objective, params, Batch((first.x[:1], first.y[:1]), 1.0)).numel()
                counter.forwards += 1
            for batch in objective.batches:
                value = None
                if independent:
                    value = _per_example_batch(objective, params, batch, ggn, max(1, settings.block // width), counter)
                if value is None:
                    if not checked:
                        _check_exact(objective, counter)
                        checked = True
                    methods.add("exact batch rows")
                    value = _exact_batch(objective, params, batch, ggn, settings.block, counter)
                else:
                    methods.add("exact per-example")
                total += value * (batch.size if ggn else 1.0) / objective.num_examples
        return total, None, None, {"method": ", ".join(sorted(methods))}
    op = (GGNOperator if ggn else JacobianGramOperator)(objective, block_size=settings.block)
    counter.forwards += 1  # the operator checks the first batch's outputs
    result = trace_estimator(settings.trace)(op, settings.matvecs, seed=settings.seed, block_size=settings.block)
    batches = len(objective.counts)
    counter.forwards += result.hvps * batches
    counter.backwards += result.hvps * batches
    details: dict[str, object] = {"method": settings.trace, "products": result.hvps, **{
        k: v for k, v in result.settings.items() if k in ("sketch_size", "distribution")}}
    stderr = result.stderr if math.isfinite(result.stderr) else None
    return result.estimate, stderr, None, details


def jacobian_trace(objective: Objective, settings: SharpnessSettings, counter: Counter) -> MeasureOutput:
    """``(1/N) Σ_i ‖∂f(x_i)/∂w‖_F²`` (see the module docstring)."""
    return _output_trace(objective, settings, counter, ggn=False)


def ggn_trace(objective: Objective, settings: SharpnessSettings, counter: Counter) -> MeasureOutput:
    """``tr G = Σ_b (n_b/N) tr(J_bᵀ ∇²_f ℓ_b J_b)`` (see the module docstring)."""
    return _output_trace(objective, settings, counter, ggn=True)
