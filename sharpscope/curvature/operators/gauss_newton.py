"""Curvature through the model's outputs: generalised Gauss–Newton and empirical Fisher operators.

Both have the form ``A = Σ_b w_b J_bᵀ M_b J_b`` with ``J_b = ∂f(X_b; θ)/∂θ`` the Jacobian of batch
``b``'s outputs, ``w_b = n_b / N`` and an output-space matrix ``M_b``:

* generalised Gauss–Newton (:class:`GGNOperator`): ``M_b = ∇²_f ℓ_b``, the Hessian of the batch's
  mean loss with respect to the outputs. It is the Hessian without the term that carries the
  outputs' second derivatives, ``H = G + Σ_b w_b Σ_o (∂ℓ_b/∂f_o) ∇²_θ f_o``; positive
  semi-definite for a convex loss (cross entropy, squared error).
* empirical Fisher (:class:`EmpiricalFisherOperator`): ``F = (1/N) Σ_i g_i g_iᵀ`` over the ``N``
  examples of the probe set, with ``g_i = ∇_θ ℓ(f(x_i), y_i)`` the gradient of example ``i``'s own
  loss (no ``1/N²``: the mean, not the sum, of the outer products). Since ``ℓ_b = (1/n_b) Σ_i ℓ_i``,
  ``g_i = J_bᵀ r_i`` with ``r_i = n_b ∂ℓ_b/∂f_i``, so ``M_b = n_b Σ_i r̂_i r̂_iᵀ`` with
  ``r̂_i = ∂ℓ_b/∂f_i`` (a rank-one term per example).

Products are matrix-free: ``u = J_b v`` by forward mode (``torch.func.jvp``), ``M_b u`` in output
space (for the GGN by reverse mode on the output gradient), then ``J_bᵀ (M_b u)`` by reverse mode
(``torch.func.vjp``), vmapped over a block of vectors. One product costs about one forward-mode and
one reverse pass per batch, like a Hessian-vector product; results count it as one HVP.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.func import grad, jvp, vjp, vmap

from sharpscope.curvature.operators.distributed import sum_across_ranks
from sharpscope.curvature.operators.linear_operator import LinearOperator
from sharpscope.curvature.operators.objective import Batch, Objective
from sharpscope.curvature.operators.precision import (
    MeasuredPrecision,
    ProductPrecision,
    product_precision,
    resolve_precision,
)
from sharpscope.errors import ConfigError, ObjectiveError
from sharpscope.validation import check_int, check_type


def batch_outputs(objective: Objective, params: dict[str, Tensor], batch: Batch) -> Tensor:
    """The model's outputs ``f(X_b; θ)`` on one batch, after the objective's output adapter (call inside
    ``objective.mode()``); they must be one tensor."""
    out, _ = objective.output_and_loss(params, batch)
    if not isinstance(out, Tensor):
        raise ObjectiveError(f"output-space operators need the model output as one tensor, got {type(out).__name__} "
                             "(pass output= to the Objective to select it)")
    return out


def output_loss(objective: Objective, out: Tensor, batch: Batch) -> Tensor:
    """The batch's mean loss ``ℓ_b`` as a function of the outputs."""
    return objective.output_loss(out, batch)


class OutputCurvatureOperator(MeasuredPrecision, LinearOperator):
    """``v -> Σ_b w_b J_bᵀ M_b J_b v``; subclasses give the output-space product ``M_b U``.

    Args:
        objective: model, loss and probe set (dropout off; BatchNorm as the objective says).
        block_size: vectors per vmapped pass (memory: one batch's outputs times the block).
        precision: the products' arithmetic, as for :class:`~sharpscope.curvature.HessianOperator`:
            ``"strict"`` IEEE float32 (the default), ``"tf32"`` or ``"bf16"``; a fast one measures its
            deviation from a strict product once (:meth:`precision_record`).
    """

    name = "output-curvature"

    def __init__(self, objective: Objective, *, block_size: int = 8, precision: ProductPrecision = "strict") -> None:
        check_type("objective", objective, Objective, "an Objective (model, loss and probe data)")
        check_int("block_size", block_size, low=1)
        self.precision: ProductPrecision = resolve_precision(precision, objective.dtype)
        super().__init__(objective.dim, objective.dtype, objective.device)
        self.objective = objective
        self.block_size = block_size
        self.compile = False
        self._init_precision_check()
        with objective.mode(), torch.no_grad():
            first = objective.batches[0]
            out = batch_outputs(objective, self._params(), first)
            if out.ndim < 1 or out.shape[0] != first.size:
                raise ObjectiveError(f"model outputs {tuple(out.shape)} for a batch of {first.size} examples: "
                                     "the first dimension must index the examples")
            self._check(out, first)

    def _check(self, out: Tensor, batch: Batch) -> None:
        """Validate the loss on the first batch's outputs before any product (subclasses)."""

    def _params(self) -> dict[str, Tensor]:
        return self.objective.param_values()

    def _output_product(self, out: Tensor, batch: Batch, U: Tensor, context: object = None) -> Tensor:
        """``M_b U`` for one output-shaped tangent ``U`` (vmapped over the block); ``context`` from :meth:`_prepare`."""
        raise NotImplementedError

    @torch.no_grad()  # parameters left out of ``params`` must not record autograd history
    def _batch_product(self, params: dict[str, Tensor], batch: Batch, rows: Tensor) -> Tensor:
        objective = self.objective

        def outputs(p: dict[str, Tensor]) -> Tensor:
            return batch_outputs(objective, p, batch)

        out, pullback = vjp(outputs, params)[:2]
        out = out.detach()
        context = self._prepare(out, batch)

        def one(v: Tensor) -> Tensor:
            u = jvp(outputs, (params,), (objective.unflatten(v),))[1]
            (g,) = pullback(self._output_product(out, batch, u, context))
            return objective.flatten(g.values())

        return vmap(one)(rows)

    def _prepare(self, out: Tensor, batch: Batch) -> object:
        """Per-batch quantities the output product reuses for every vector of a block."""
        return None

    def _products(self, rows: Tensor, precision: ProductPrecision) -> Tensor:
        """``Σ_b w_b J_bᵀ M_b J_b`` applied to the rows over this rank's batches, summed across ranks."""
        out = torch.zeros_like(rows)
        params = self._params()
        with product_precision(precision, self.device), self.objective.mode():
            for batch, w in zip(self.objective.batches, self.objective.weights()):
                for start in range(0, rows.shape[0], self.block_size):
                    stop = min(start + self.block_size, rows.shape[0])
                    out[start:stop] += w * self._batch_product(params, batch, rows[start:stop])
        return sum_across_ranks(out)

    def _strict_and_configured(self, v: Tensor) -> tuple[Tensor, Tensor]:
        return self._products(v, "strict"), self._products(v, self.precision)

    def _matmat(self, V: Tensor) -> Tensor:
        self._check_products_once()
        out = self._products(V.T.contiguous(), self.precision)
        if not torch.isfinite(out).all():
            raise ObjectiveError(f"a {self.name} product is not finite: the loss or its derivatives overflow "
                                 "at these parameters")
        return out.T

    def describe(self) -> dict[str, object]:
        """The objective's record with the operator's name, block size and product precision."""
        return {**self.objective.describe(), "operator": self.name, "block_size": self.block_size,
                "product_precision": self.precision_record()}


class GGNOperator(OutputCurvatureOperator):
    """The generalised Gauss–Newton matrix ``G = Σ_b (n_b/N) J_bᵀ (∇²_f ℓ_b) J_b`` (see the module docstring).

    For a model linear in its parameters with a squared loss it equals the Hessian.

    Example (a tanh network away from any minimum: ``G`` is symmetric positive semi-definite, as
    ``J_bᵀ (∇²_f ℓ_b) J_b`` is for a convex loss; the Hessian need not be)::

        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)).double()
        >>> X, y = torch.randn(16, 3, dtype=torch.float64), torch.randn(16, 1, dtype=torch.float64)
        >>> G = GGNOperator(Objective(model, torch.nn.MSELoss(), (X, y)))
        >>> dense = G.matmat(torch.eye(G.dim, dtype=torch.float64))
        >>> bool(torch.allclose(dense, dense.T)), bool(torch.linalg.eigvalsh(dense).min() > -1e-10)
        (True, True)
    """

    name = "ggn"

    def _prepare(self, out: Tensor, batch: Batch) -> object:
        # ∇²_f ℓ_b is symmetric, so its product is the pullback of the output gradient (reverse over
        # reverse); forward mode through some losses' backward (mse_loss) fails in torch.func
        def loss_of(o: Tensor) -> Tensor:
            return output_loss(self.objective, o, batch)

        pullback = vjp(grad(loss_of), out)[1]
        return pullback

    def _output_product(self, out: Tensor, batch: Batch, U: Tensor, context: object = None) -> Tensor:
        assert callable(context)
        (hu,) = context(U)
        return hu


class EmpiricalFisherOperator(OutputCurvatureOperator):
    """The empirical Fisher ``F = (1/N) Σ_i g_i g_iᵀ``, ``g_i`` the gradient of example ``i``'s loss.

    Normalisation: the mean over the ``N`` examples of the probe set (so ``tr F`` is the mean
    squared per-example gradient norm). ``loss_fn`` must be a mean over examples (cross entropy,
    the squared losses of :mod:`sharpscope.losses`, ``nn.MSELoss()``); this is checked on the first
    batch. With ``bn="batch"`` an example's loss is evaluated with its batch's statistics, so ``g_i``
    also flows through the other examples of the batch.
    """

    name = "ef"

    def _check(self, out: Tensor, batch: Batch) -> None:
        whole = float(output_loss(self.objective, out, batch))
        if not batch.pair:
            raise ConfigError("the empirical Fisher splits batches into examples and needs (x, y) pair batches")
        rows = [float(output_loss(self.objective, out[i:i + 1], Batch((batch.x[i:i + 1], batch.y[i:i + 1]), 1.0)))
                for i in range(int(batch.size))]
        mean = math.fsum(rows) / len(rows)
        tol = math.sqrt(torch.finfo(self.dtype).eps) * max(1.0, abs(whole))
        if not abs(whole - mean) <= tol:
            raise ConfigError(f"the empirical Fisher needs loss_fn to be the mean of per-example losses; on the "
                              f"first batch loss_fn gives {whole:.6g} but the mean of its per-example values is "
                              f"{mean:.6g} (a sum-reduced loss?)")

    def _prepare(self, out: Tensor, batch: Batch) -> object:
        return grad(lambda o: output_loss(self.objective, o, batch))(out)  # r̂_i as rows

    def _output_product(self, out: Tensor, batch: Batch, U: Tensor, context: object = None) -> Tensor:
        r = context
        assert isinstance(r, Tensor)
        s = (r * U).reshape(r.shape[0], -1).sum(1)  # r̂_iᵀ U_i for each example
        return batch.size * r * s.reshape(-1, *([1] * (r.ndim - 1)))
