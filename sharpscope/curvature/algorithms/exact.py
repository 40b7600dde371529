"""Dense Hessians of small objectives, for tests and self-checks."""

from __future__ import annotations

import torch
from torch import Tensor

from sharpscope.curvature.operators.objective import Objective
from sharpscope.errors import ConfigError
from sharpscope.validation import check_type


def exact_hessian(objective: Objective, *, max_dim: int = 20_000) -> Tensor:
    """The dense ``(dim, dim)`` Hessian ``Σ_b (n_b/N) ∇²ℓ_b(θ)``, row by row with
    ``torch.autograd.functional.hessian`` on each batch's loss as a function of the flat parameter
    vector. Independent of :class:`HessianOperator`'s product code; use it to check that code.
    (``torch.func.hessian`` is not used: under ``vmap`` it returns wrong Hessians for train-mode
    BatchNorm, about 1% off in torch 2.13.) Refuses objectives above ``max_dim`` parameters.
    """
    check_type("objective", objective, Objective, "an Objective (model, loss and probe data)")
    if objective.dim > max_dim:
        raise ConfigError(f"exact_hessian needs dim <= max_dim={max_dim} (dense dim² matrix); this objective "
                          f"has {objective.dim} parameters")
    theta = objective.parameter_vector()
    total = torch.zeros(objective.dim, objective.dim, dtype=objective.dtype, device=objective.device)
    with objective.mode():
        for batch, w in zip(objective.batches, objective.weights()):
            f = lambda flat, b=batch: objective.batch_loss(objective.unflatten(flat), b)  # noqa: E731
            total += w * torch.autograd.functional.hessian(f, theta)
    return 0.5 * (total + total.T)
