"""One interface to a probe set's loss and curvature, whether the model is whole or sharded with ``fully_shard``.

The tracker measures through a view of its probe objective ``L(θ) = (1/N) Σ_b n_b ℓ_b(θ)``:

* :class:`ProbeView` — examples only: ``(loss, accuracy)`` at the current weights and which examples the
  model gets right (the test set of a whole model);
* :class:`WholeView` — a model every process holds whole: :class:`~sharpscope.curvature.HessianOperator`
  products, the whole gradient, Adam's preconditioner, update curvature by product or by differences;
* :class:`ShardedView` — a model sharded with ``fully_shard``: the
  :class:`~sharpscope.curvature.operators.sharded.ShardedHessianOperator` (finite differences of sharded
  gradients), sums over the ranks, this rank's slices of the parameters; no whole gradient.

:func:`view_of` picks the view; the tracker never asks which kind it holds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from sharpscope.curvature import HessianOperator, Objective
from sharpscope.curvature.operators.distributed import world_size
from sharpscope.curvature.operators.preconditioned import adam_optimizer, adam_preconditioner
from sharpscope.curvature.operators.sharded import ShardedHessianOperator, local_part
from sharpscope.errors import ConfigError
from sharpscope.io.predictions import pack_correct
from sharpscope.track.update_curvature import UpdateCurvature, curvature_along, curvature_along_sharded


class ProbeView:
    """A set of examples evaluated at the model's current weights."""

    def __init__(self, objective: Objective) -> None:
        self.objective = objective

    def evaluate(self) -> tuple[float, float | None]:
        """Mean loss and accuracy ``(Σ_b n_b ℓ_b / N, Σ_b n_b acc_b / N)``, summed over ranks under a process
        group; accuracy None when outputs are not class scores. Non-finite losses are returned as they are."""
        loss, acc = self.objective.evaluate()
        return float(loss), None if acc is None else float(acc)

    def packed_correct(self) -> dict[str, Any] | None:
        """Which examples the model gets right, packed (:mod:`sharpscope.io.predictions`); None when the
        outputs are not class scores, or when several processes each hold a share of the examples."""
        if world_size() > 1:
            return None
        correct = self.objective.correct_examples()
        return None if correct is None else pack_correct(correct.numpy())

    def release(self) -> None:
        """Free what the products cached between measurements (nothing here)."""


class WholeView(ProbeView):
    """The probe set of a model held whole, with its Hessian ``op``."""

    def __init__(self, objective: Objective, op: HessianOperator) -> None:
        super().__init__(objective)
        self.op = op

    @property
    def modes(self) -> dict[str, str]:
        """The product modes the operator uses (chosen by timing under ``hvp_mode="auto"``)."""
        return self.op.modes

    def release(self) -> None:
        """Free the cached gradient graphs: training needs the memory until the next measurement."""
        self.op.release_graphs()

    def gradient(self) -> tuple[Tensor | None, float]:
        """``(∇L, ‖∇L‖)`` at the current weights (one gradient over the probe set)."""
        grad = self.objective.gradient()
        return grad, float(grad.norm())

    def local_params(self) -> dict[str, Tensor]:
        """The parameters, by name (whole tensors, aliasing the model's)."""
        return dict(self.objective.params)

    def product_settings(self) -> dict[str, Any]:
        """How a Hessian-vector product is taken (for a record's ``settings``): the modes and graph cache in
        use, as chosen under ``"auto"``."""
        return {"hvp_mode": self.op.mode, "cache_graphs": self.op.graph_cache}

    def update_curvature(self, method: str, before: Mapping[str, Tensor], optimizer: torch.optim.Optimizer | None,
                         update_op: Callable[[], HessianOperator], how: dict[str, Any]) -> UpdateCurvature:
        """``κ_u`` of ``u = θ_now − before`` (:func:`curvature_along`), with Adam's ``P`` for the preconditioned
        quotient when ``optimizer`` is (or wraps) Adam with state. ``update_op`` gives the operator of the
        ``"hvp"`` method; ``how["hvp_mode"]`` and ``how["preconditioner"]`` are set even when the reading fails."""
        diag_p = None
        try:
            adam_optimizer(optimizer)
            diag_p = adam_preconditioner(optimizer, self.objective)  # type: ignore[arg-type]
            how["preconditioner"] = "adam"
        except ConfigError:
            pass  # not Adam (or no state): no preconditioned quotient
        uop = update_op() if method == "hvp" else None
        try:
            return curvature_along(method, self.objective, before, op=uop, diag_p=diag_p)
        finally:
            if uop is not None:
                how["hvp_mode"] = uop.mode  # after the product: under "auto" it chooses the mode


class ShardedView(ProbeView):
    """The probe set of a model sharded with ``fully_shard``: sums over the ranks, this rank's slices."""

    def __init__(self, objective: Objective, op: ShardedHessianOperator | None = None) -> None:
        super().__init__(objective)
        self.op = op if op is not None else ShardedHessianOperator(objective)

    @property
    def modes(self) -> dict[str, str]:
        """No product modes to choose: the products are finite differences of gradients."""
        return {}

    def evaluate(self) -> tuple[float, float | None]:
        """Loss and accuracy on the probe set, summed over the ranks (every rank must call)."""
        return self.op.evaluate()

    def gradient(self) -> tuple[Tensor | None, float]:
        """``(None, ‖∇L‖)``: the norm summed over the ranks; no rank holds the whole gradient."""
        return None, self.op.gradient_norm()

    def local_params(self) -> dict[str, Tensor]:
        """Each parameter's slice on this rank, by name."""
        return {n: local_part(p) for n, p in self.objective.params.items()}

    def product_settings(self) -> dict[str, Any]:
        """How the sharded products are taken, for the record's ``settings``."""
        shard = {key: value for key, value in self.op.describe().items()
                 if key in ("world_size", "step", "step_rule", "gradient_divide_factor")}
        return {"hvp_mode": "finite difference (sharded)", "cache_graphs": False, "shard": shard}

    def update_curvature(self, method: str, before: Mapping[str, Tensor], optimizer: torch.optim.Optimizer | None,
                         update_op: Callable[[], HessianOperator], how: dict[str, Any]) -> UpdateCurvature:
        """:func:`curvature_along_sharded` (no preconditioned quotient: a sharded optimizer's state is sharded too)."""
        if method == "hvp":
            how["hvp_mode"] = "finite difference (sharded)"
        flat = torch.cat([before[n].reshape(-1) for n in self.objective.names])
        return curvature_along_sharded(method, self.op, flat)


OperatorView = WholeView | ShardedView


def view_of(objective: Objective, sharded: bool, operator: Callable[[Objective], HessianOperator]) -> OperatorView:
    """The view of ``objective``: sharded, or whole with the Hessian ``operator(objective)``."""
    return ShardedView(objective) if sharded else WholeView(objective, operator(objective))


def examples_view(objective: Objective, sharded: bool) -> ProbeView:
    """A view of ``objective`` for loss and accuracy only (the test set): summed over the ranks when ``sharded``."""
    return ShardedView(objective) if sharded else ProbeView(objective)
