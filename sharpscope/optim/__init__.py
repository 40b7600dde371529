"""Optimizers whose stability thresholds sharpscope compares with measured sharpness.

Provided here: :class:`SAM` (p = 2 / ∞ / any p > 1, ASAM, m-sharpness, weight decay in or out
of the ascent), :class:`SparseSAM` (Fisher, dynamic, random, N:M and fixed masks), :class:`RS`
and :class:`SA` (Ahn et al. 2024), the BatchNorm helper :func:`frozen_bn_stats` and the DDP
helper :func:`maybe_no_sync`. Every optimizer here follows one protocol: ``step(closure)``
(the closure is called at ``w`` and at every moved point), ``step_from_gradient(closure)`` (``.grad``
already holds the gradient at ``w``) and ``restore()``; SAM variants also offer
``first_step()`` / ``second_step()`` around any ``torch.optim`` optimizer.

Full-batch GD and momentum come from ``torch.optim`` unchanged; the thresholds in
:mod:`sharpscope.thresholds` are derived for exactly these updates (``g`` = gradient of the
objective being descended, including any L2 term; weight decay is part of ``g`` in
``torch.optim.SGD``, so the Hessian must then include ``wd·I``):

* ``SGD(lr=η)``, full batch (GD): ``x ← x − η g``; threshold ``gd_edge = 2/η``.
* ``SGD(lr=η, momentum=β)`` (Polyak, PyTorch form): ``b ← β b + g;  x ← x − η b``;
  threshold ``momentum_edge = (2 + 2β)/η``.
* ``SGD(lr=η, momentum=β, nesterov=True)``: ``b ← β b + g;  x ← x − η (g + β b)``;
  threshold ``momentum_edge(..., nesterov=True) = (2 + 2β)/(η(1 + 2β))``.
* EMA momentum (``SGD(momentum=β, dampening=β)``): ``m ← β m + (1 − β) g;  x ← x − η m``;
  threshold ``ema_momentum_edge = (2 + 2β)/(η(1 − β))``.
* ``Adam(lr=η, betas=(β₁, β₂))``: ``x ← x − η m̂ / (sqrt(v̂) + ε)``; threshold
  ``adam_edge = (2 + 2β₁)/(η(1 − β₁))`` on ``λ_max(P⁻¹H)``, not on ``λ_max(H)``.
* ``SAM(params, SGD, rho=ρ, lr=η)``: ``x ← x − η ∇f(x + ρ g/‖g‖)``; threshold
  ``sam_edge(η, ρ, ‖g‖)``.

``torch.optim.SGD`` starts its buffer at ``b = g`` on the first step (not ``β·0 + g`` with
dampening), which equals the updates above with ``b₀ = 0`` and dampening 0. With
``dampening = β`` (and ``b₀ = g``) it is the EMA form up to the first step. Adam's ``P`` is
``diag(sqrt(v̂) + ε)``; its bias corrections make ``P`` and the step change early on.
"""

from sharpscope.optim._base import PerturbedOptimizer, TwoPassOptimizer, maybe_no_sync
from sharpscope.optim.batchnorm import disable_running_stats, enable_running_stats, frozen_bn_stats
from sharpscope.optim.random_perturbation import (
    BATCH_SCALINGS,
    PERTURBATION_BATCHES,
    RS,
    SA,
    StepRecord,
    batch_scaled,
    sample_unit_sphere,
)
from sharpscope.optim.sam import SAM, asam_param_groups
from sharpscope.optim.sparse_sam import (
    SparseSAM,
    cosine_drop_rate,
    dynamic_mask_update,
    empirical_fisher_diagonal,
    fisher_mask,
    nm_mask,
    num_kept,
    random_mask,
)

__all__ = [
    "SAM",
    "SparseSAM",
    "RS",
    "SA",
    "StepRecord",
    "BATCH_SCALINGS",
    "PERTURBATION_BATCHES",
    "batch_scaled",
    "asam_param_groups",
    "frozen_bn_stats",
    "disable_running_stats",
    "enable_running_stats",
    "maybe_no_sync",
    "PerturbedOptimizer",
    "TwoPassOptimizer",
    "sample_unit_sphere",
    "fisher_mask",
    "random_mask",
    "nm_mask",
    "num_kept",
    "cosine_drop_rate",
    "dynamic_mask_update",
    "empirical_fisher_diagonal",
]
