"""Sparse SAM (Mi et al. 2022, follow-up 2023): the SAM perturbation multiplied by a binary mask.

``ε = ε_SAM(g) ⊙ m`` with ``m ∈ {0,1}^d`` (1 = perturbed). By default the
normaliser is the norm of the **full, unmasked** ascent vector, as in the official code, so
``‖ε‖ ≤ ρ``; ``normalize_masked=True`` normalises ``h ⊙ m`` instead (paper equation: left open).
Sparsity ``s`` is the fraction of coordinates *not* perturbed; a mask keeps
``k = d − ⌈s·d⌉ = ⌊(1 − s)·d⌋`` ones (computed without floating-point slop).

Mask builders are pure functions of tensors (lists aligned with the parameter list):

* :func:`fisher_mask` — global top-k of the empirical Fisher diagonal (SSAM-F);
  :func:`empirical_fisher_diagonal` computes ``F_j = Σ_s (∂ℓ_s/∂w_j)²`` over a sample.
* :func:`random_mask` — exactly ``k`` ones at random (SSAM-D initialisation).
* :func:`dynamic_mask_update` + :func:`cosine_drop_rate` — SSAM-D drop and regrow.
* :func:`nm_mask` — N:M structured masks (N largest scores in every group of M).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn

from sharpscope.errors import ConfigError, DataError
from sharpscope.io.migrations import MASKS_KEY, SCORED_KEY, with_scored_flag
from sharpscope.optim._base import LossFn, Tensors, make_generator
from sharpscope.optim.batchnorm import frozen_bn_stats
from sharpscope.optim.sam import SAM
from sharpscope.validation import check_bool, check_choice, check_int, check_real

__all__ = [
    "SparseSAM",
    "num_kept",
    "fisher_mask",
    "random_mask",
    "nm_mask",
    "cosine_drop_rate",
    "dynamic_mask_update",
    "empirical_fisher_diagonal",
]

MaskKind = Literal["fisher", "nm", "dynamic", "random"]
Strategy = Literal["gradient", "weight", "random"]


# ----------------------------------------------------------------------------- pure functions
def num_kept(d: int, sparsity: float) -> int:
    """Number of ones ``k = d − ⌈s·d⌉``, with ``s·d`` snapped to an integer when within 1e-9.

    ``(1 − 0.9)·10`` is 0.999… in floating point; this returns 1 for ``num_kept(10, 0.9)``.
    """
    s = check_real("sparsity", sparsity, low=0.0, high=1.0)
    off = s * d
    nearest = round(off)
    n_off = nearest if abs(off - nearest) <= 1e-9 * max(1.0, float(d)) else math.ceil(off)
    return d - int(n_off)


def _flat(tensors: Tensors) -> Tensor:
    if not tensors:
        raise DataError("need at least one tensor")
    dev = tensors[0].device
    return torch.cat([t.detach().reshape(-1).to(dev, torch.float64) for t in tensors])


def _unflat(flat: Tensor, like: Tensors) -> list[Tensor]:
    out, start = [], 0
    for t in like:
        out.append(flat[start:start + t.numel()].reshape(t.shape).to(t.device))
        start += t.numel()
    return out


def _top_indices(scores: Tensor, candidates: Tensor, k: int) -> Tensor:
    """The ``k`` candidate indices with the largest scores; ties go to the lower index; NaN last."""
    if k <= 0:
        return candidates[:0]
    vals = torch.nan_to_num(scores[candidates], nan=-math.inf)
    order = torch.sort(vals, descending=True, stable=True).indices
    return candidates[order[:k]]


def fisher_mask(fisher: Tensors, sparsity: float) -> list[Tensor]:
    """Global top-``⌊(1 − s)d⌋`` of the Fisher scores over all tensors together (SSAM-F).

    Returns bool tensors shaped like ``fisher``. Ties go to the earlier coordinate.
    """
    flat = _flat(fisher)
    k = num_kept(flat.numel(), sparsity)
    keep = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    keep[_top_indices(flat, torch.arange(flat.numel(), device=flat.device), k)] = True
    return [m.bool() for m in _unflat(keep, fisher)]


def random_mask(like: Tensors, sparsity: float, generator: torch.Generator) -> list[Tensor]:
    """Exactly ``⌊(1 − s)d⌋`` ones at uniformly random positions (top-k of i.i.d. uniforms)."""
    d = sum(t.numel() for t in like)
    scores = torch.rand(d, generator=generator, dtype=torch.float64)
    return fisher_mask(_unflat(scores, [torch.empty(t.shape) for t in like]), sparsity) if like else []


def nm_mask(scores: Tensors, n: int, m: int) -> list[Tensor]:
    """N:M structured mask: in every group of ``m`` consecutive weights keep the ``n`` largest.

    Grouping (defined here, not copied from the official code's transposed view): a tensor of
    shape ``(out, *rest)`` is viewed as ``(out, fan_in)`` in its memory order
    (``fan_in = prod(rest)``, i.e. ``in_channels × kh × kw`` for a conv kernel) and each row is cut
    into consecutive groups of ``m``. Tensors with fewer than 2 dimensions (biases, norm
    parameters) and tensors whose ``fan_in`` is not a multiple of ``m`` are left dense (all ones).
    Ties go to the earlier coordinate of the group.
    """
    n = check_int("n", n, low=1)
    m = check_int("m", m, low=1)
    if n > m:
        raise ConfigError(f"n must be <= m for an N:M mask, got n={n}, m={m}")
    out = []
    for s in scores:
        if s.dim() < 2 or (s[0].numel() % m) != 0:
            out.append(torch.ones(s.shape, dtype=torch.bool, device=s.device))
            continue
        groups = torch.nan_to_num(s.detach().to(torch.float64), nan=-math.inf).reshape(s.shape[0], -1, m)
        idx = torch.sort(groups, dim=-1, descending=True, stable=True).indices[..., :n]
        mask = torch.zeros(groups.shape, dtype=torch.bool, device=s.device)
        mask.scatter_(-1, idx, True)
        out.append(mask.reshape(s.shape))
    return out


def cosine_drop_rate(t: float, t_end: float, drop_rate: float) -> float:
    """SSAM-D drop rate ``dr(t) = drop_rate · (1 + cos(π·t/t_end)) / 2``, held at 0 for ``t ≥ t_end``."""
    t = check_real("t", t, low=0.0)
    t_end = check_real("t_end", t_end, low=0.0, low_open=True)
    drop_rate = check_real("drop_rate", drop_rate, low=0.0, high=1.0)
    return drop_rate * (1.0 + math.cos(math.pi * min(t, t_end) / t_end)) / 2.0


def dynamic_mask_update(mask: Tensors, death_scores: Tensors,
                        growth_scores: Tensors, drop_rate: float) -> list[Tensor]:
    """One SSAM-D round: drop the weakest active coordinates, regrow as many inactive ones.

    With ``k`` active coordinates out of ``d``, ``r = min(⌊k·dr⌋, d − k)``. The ``k − r``
    active coordinates with the largest ``death_scores`` survive; the ``r`` previously inactive
    coordinates with the largest ``growth_scores`` are switched on. The count of ones stays
    exactly ``k`` and exactly ``r`` coordinates flip each way.
    """
    dr = check_real("drop_rate", drop_rate, low=0.0, high=1.0)
    flat = _flat(mask) != 0
    d, k = flat.numel(), int(flat.sum())
    r = min(int(math.floor(k * dr + 1e-9)), d - k)
    active = torch.nonzero(flat).flatten()
    inactive = torch.nonzero(~flat).flatten()
    new = torch.zeros_like(flat)
    new[_top_indices(_flat(death_scores).to(flat.device), active, k - r)] = True
    new[_top_indices(_flat(growth_scores).to(flat.device), inactive, r)] = True
    return [x.bool() for x in _unflat(new, mask)]


def empirical_fisher_diagonal(model: nn.Module, loss_fn: LossFn, inputs: Tensor, targets: Tensor,
                              *, params: Tensors | None = None) -> list[Tensor]:
    """``F_j = Σ_s (∂ℓ_s/∂w_j)²`` over the examples of ``inputs`` (one backward each, batch size 1).

    ``loss_fn(model, x, y)`` is called on single examples; ``params`` defaults to the model's
    trainable parameters in ``model.parameters()`` order (the order an optimizer built from
    ``model.parameters()`` uses). Gradients go through ``torch.autograd.grad`` so ``.grad`` is
    untouched, and BatchNorm running statistics are not updated. Choose the sample (SSAM-F draws
    ``num_samples`` training examples, e.g. 16–1024) and the model mode yourself.
    """
    plist = list(params) if params is not None else [p for p in model.parameters() if p.requires_grad]
    if inputs.shape[0] == 0 or inputs.shape[0] != targets.shape[0]:
        raise DataError(f"inputs and targets need the same non-zero number of examples, got "
                        f"{inputs.shape[0]} and {targets.shape[0]}")
    fisher = [torch.zeros_like(p) for p in plist]
    with frozen_bn_stats(model), torch.enable_grad():
        for i in range(inputs.shape[0]):
            loss = loss_fn(model, inputs[i:i + 1], targets[i:i + 1])
            grads = torch.autograd.grad(loss, plist, allow_unused=True)
            for f, g in zip(fisher, grads):
                if g is not None:
                    f.addcmul_(g, g)
    return fisher


# ----------------------------------------------------------------------------- the optimizer
class SparseSAM(SAM):
    """SAM whose perturbation is masked: ``ε = ε_SAM ⊙ m`` (SSAM-F, SSAM-D, N:M, fixed masks).

    Args (beyond :class:`SAM`'s):
        mask: ``"fisher"`` (global top-k of scores from ``score_fn``), ``"nm"`` (N:M on scores
            from ``score_fn``), ``"dynamic"`` (random start, cosine drop-and-regrow),
            ``"random"`` (exactly k random ones), or a sequence of 0/1 tensors (a fixed mask,
            aligned with the parameters in param-group order).
        sparsity: fraction ``s`` of coordinates not perturbed (ignored by ``"nm"``, whose density
            is ``n/m`` on grouped tensors).
        update_interval: steps between automatic mask updates; they fall on steps ``t``
            (counted from 0) with ``t % update_interval == 0``. Required for ``"dynamic"`` and for
            ``"fisher"``/``"nm"`` with a ``score_fn``; must be ``None`` for a fixed mask and for
            ``"fisher"``/``"nm"`` without ``score_fn`` (then call :meth:`update_mask` with scores
            yourself); ``"random"`` with ``None`` keeps one random mask for the whole run.
            ``"fisher"``/``"nm"``: after that step's SAM update (official SSAM-F order). A
            ``"fisher"``/``"nm"`` mask never scored would be all zeros (SAM silently reduced to its
            base optimizer), so the first step scores it first with ``score_fn`` (recorded in
            ``first_scored_at``, and in ``state_dict()``), and without a ``score_fn`` it is refused
            until :meth:`update_mask` or :meth:`set_masks` gave it a mask.
            ``"dynamic"``: inside that step's ``first_step``, after ``ε`` was computed with the
            old mask, with drop rate ``cosine_drop_rate(t, total_steps, drop_rate)`` and death
            scores from the first-pass gradient. ``"random"``: redrawn after the step.
        score_fn: ``() -> list[Tensor]`` returning scores aligned with the parameters, e.g.
            ``lambda: empirical_fisher_diagonal(model, loss_fn, x_sample, y_sample)``; required for
            automatic ``"fisher"``/``"nm"`` updates. :meth:`update_mask` accepts scores directly.
        n, m: the N:M pattern (default 2:4).
        drop_rate, total_steps: SSAM-D schedule (``total_steps`` required for ``"dynamic"``).
        drop_strategy, growth_strategy: ``"gradient"`` (|g|), ``"weight"`` (|w|) or ``"random"``
            scores for SSAM-D death (default gradient) and growth (default random).
        normalize_masked: (left open by the paper) normalise by ``‖h ⊙ m‖`` instead of the unmasked ``‖h‖``
            (default False = official code; then ``‖ε‖_p ≤ ρ``).
        generator, seed: the RNG of random masks and random scores (a CPU generator; never the
            global RNG). Its state is saved in ``state_dict()`` together with the masks.
    """

    def __init__(
        self,
        params: Any,
        base_optimizer: type[torch.optim.Optimizer],
        rho: float = 0.05,
        *,
        mask: MaskKind | Tensors = "fisher",
        sparsity: float = 0.5,
        update_interval: int | None = None,
        score_fn: Callable[[], Tensors] | None = None,
        n: int = 2,
        m: int = 4,
        drop_rate: float = 0.5,
        total_steps: int | None = None,
        drop_strategy: Strategy = "gradient",
        growth_strategy: Strategy = "random",
        normalize_masked: bool = False,
        generator: torch.Generator | None = None,
        seed: int = 0,
        **sam_kwargs: Any,
    ) -> None:
        super().__init__(params, base_optimizer, rho, **sam_kwargs)
        self.sparsity = check_real("sparsity", sparsity, low=0.0, high=1.0)
        self.update_interval = None if update_interval is None else check_int("update_interval", update_interval, low=1)
        if score_fn is not None and not callable(score_fn):
            raise ConfigError("score_fn must be callable and return one score tensor per parameter")
        self.score_fn = score_fn
        self.n, self.m = check_int("n", n, low=1), check_int("m", m, low=1)
        if self.n > self.m:
            raise ConfigError(f"n must be <= m, got n={n}, m={m}")
        self.drop_rate = check_real("drop_rate", drop_rate, low=0.0, high=1.0)
        self.total_steps = None if total_steps is None else check_int("total_steps", total_steps, low=1)
        for name, value in (("drop_strategy", drop_strategy), ("growth_strategy", growth_strategy)):
            check_choice(name, value, get_args(Strategy))
        self.drop_strategy, self.growth_strategy = drop_strategy, growth_strategy
        self.normalize_masked = check_bool("normalize_masked", normalize_masked)
        self.generator: torch.Generator = make_generator(generator, seed)
        self._dynamic_done_at = -1

        plist = self._params()
        if isinstance(mask, str):
            if mask not in get_args(MaskKind):
                raise ConfigError(f"mask must be 'fisher', 'nm', 'dynamic', 'random' or a list of tensors, got {mask!r}")
            self.mask_kind: str = mask
            if mask == "dynamic" and self.total_steps is None:
                raise ConfigError("total_steps is required for mask='dynamic' (end of the cosine drop-rate schedule)")
            if mask in ("dynamic", "random"):
                self.masks = random_mask(plist, self.sparsity, self.generator)
            else:
                self.masks = [torch.zeros(p.shape, dtype=torch.bool) for p in plist]
        else:
            self.mask_kind = "fixed"
            self.set_masks(mask)
        needs_interval = self.mask_kind == "dynamic" or (self.mask_kind in ("fisher", "nm") and score_fn is not None)
        forbids_interval = self.mask_kind == "fixed" or (self.mask_kind in ("fisher", "nm") and score_fn is None)
        if needs_interval and self.update_interval is None:
            raise ConfigError(f"update_interval is required for mask={self.mask_kind!r}"
                              + (" with a score_fn" if score_fn is not None else ""))
        if forbids_interval and self.update_interval is not None:
            raise ConfigError(f"update_interval must be None for mask={self.mask_kind!r}"
                              + (" without a score_fn (pass score_fn=, or call update_mask(scores=...))"
                                 if self.mask_kind != "fixed" else " (a fixed mask is never updated)"))
        self.masks = [mk.to(p.device) for mk, p in zip(self.masks, plist)]
        self._mask_of = dict(zip(plist, self.masks))
        # a scored mask: every kind but an unscored "fisher"/"nm" one (all zeros until scores arrive)
        self.scored = self.mask_kind not in ("fisher", "nm")
        self.first_scored_at: int | None = None  # the step at which an unscored mask was scored on first use

    # -- masks -----------------------------------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; its parameters are perturbed densely (mask of ones) until the next update."""
        super().add_param_group(param_group)
        if "masks" in self.__dict__:  # not during construction
            for p in param_group["params"]:
                mask = torch.ones(p.shape, dtype=torch.bool, device=p.device)
                self.masks.append(mask)
                self._mask_of[p] = mask

    def set_masks(self, masks: Tensors) -> None:
        """Install masks (0/1 or bool tensors shaped like the parameters, param-group order)."""
        plist = self._params()
        masks = list(masks)
        if len(masks) != len(plist):
            raise ConfigError(f"got {len(masks)} masks for {len(plist)} parameters")
        out = []
        for i, (mk, p) in enumerate(zip(masks, plist)):
            if tuple(mk.shape) != tuple(p.shape):
                raise ConfigError(f"mask {i} has shape {tuple(mk.shape)}, parameter has {tuple(p.shape)}")
            if not bool(((mk == 0) | (mk == 1)).all()):
                raise ConfigError(f"mask {i} must be binary (0/1)")
            out.append(mk.detach().to(device=p.device, dtype=torch.bool).clone())
        self.masks = out
        self._mask_of = dict(zip(plist, out))
        self.scored = True

    def density(self) -> float:
        """Fraction of perturbed coordinates."""
        total = sum(mk.numel() for mk in self.masks)
        return float(sum(int(mk.sum()) for mk in self.masks)) / max(total, 1)

    def _scores(self, strategy: str, params: list[Tensor]) -> list[Tensor]:
        if strategy == "gradient":
            return [p.grad.detach().abs() if p.grad is not None else torch.zeros_like(p) for p in params]
        if strategy == "weight":
            return [p.detach().abs() for p in params]
        return [torch.rand(p.shape, generator=self.generator, dtype=torch.float64) for p in params]

    @torch.no_grad()
    def update_mask(self, scores: Tensors | None = None) -> None:
        """Update the mask now, according to ``mask`` (``scores`` for fisher/nm, else ``score_fn``).

        ``"dynamic"`` uses the current ``.grad`` for gradient scores and the drop rate at the
        current step count.
        """
        plist = self._params()
        kind = self.mask_kind
        if kind in ("fisher", "nm"):
            if scores is None:
                if self.score_fn is None:
                    raise ConfigError(f"mask={kind!r} needs scores: pass score_fn= to SparseSAM or scores= here")
                scores = self.score_fn()
            scores = list(scores)
            if len(scores) != len(plist) or any(tuple(s.shape) != tuple(p.shape) for s, p in zip(scores, plist)):
                raise ConfigError("scores must be one tensor per parameter, shaped like it, in param-group order")
            new = fisher_mask(scores, self.sparsity) if kind == "fisher" else nm_mask(scores, self.n, self.m)
        elif kind == "random":
            new = random_mask(plist, self.sparsity, self.generator)
        elif kind == "dynamic":
            assert self.total_steps is not None
            dr = cosine_drop_rate(self.num_steps, self.total_steps, self.drop_rate)
            death = self._scores(self.drop_strategy, plist)
            growth = self._scores(self.growth_strategy, plist)
            new = dynamic_mask_update(self.masks, death, growth, dr)
        else:
            raise ConfigError("a fixed mask is not updated; use set_masks()")
        self.set_masks(new)

    def _due(self) -> bool:
        return self.update_interval is not None and self.num_steps % self.update_interval == 0

    # -- hooks -------------------------------------------------------------------------------
    def _perturbation(self, params: list[Tensor], grads: list[Tensor], groups: list[dict[str, Any]],
                      inv_scale: float) -> list[Tensor] | None:
        """SAM's ``ε`` masked; an unscored ``"fisher"``/``"nm"`` mask is scored first (or refused)."""
        if not self.scored:
            if self.score_fn is None:
                raise ConfigError(f"SparseSAM(mask={self.mask_kind!r}) has no scores yet: its mask is all zeros, "
                                  "so the step would be the base optimizer's, unperturbed; pass score_fn= or call "
                                  "update_mask(scores=...) before the first step", argument="score_fn")
            self.update_mask()
            self.first_scored_at = self.num_steps
        return super()._perturbation(params, grads, groups, inv_scale)

    def _ascent_input(self, params: list[Tensor], h: Tensors) -> Tensors:
        if not self.normalize_masked:
            return h
        return torch._foreach_mul(h, [self._mask_of[p] for p in params])

    def _mask_perturbation(self, params: list[Tensor], eps: Tensors) -> Tensors:
        torch._foreach_mul_(eps, [self._mask_of[p] for p in params])
        return eps

    def _after_first_step(self, params: list[Tensor], grads: list[Tensor]) -> None:
        if self.mask_kind == "dynamic" and self._due() and self._dynamic_done_at != self.num_steps:
            self.update_mask()
            self._dynamic_done_at = self.num_steps

    def _after_second_step(self) -> None:
        if self.mask_kind in ("fisher", "nm", "random") and self._due():
            self.update_mask()

    # -- state -------------------------------------------------------------------------------
    def _extra_state(self) -> dict[str, Any]:
        extra = super()._extra_state()
        extra[MASKS_KEY] = [mk.clone() for mk in self.masks]
        extra["dynamic_done_at"] = self._dynamic_done_at
        extra[SCORED_KEY] = self.scored
        extra["first_scored_at"] = self.first_scored_at
        return extra

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        super()._load_extra_state(extra)
        extra = with_scored_flag(extra)
        if MASKS_KEY in extra:
            self.set_masks(extra[MASKS_KEY])
            self.scored = bool(extra[SCORED_KEY])
        self.first_scored_at = extra.get("first_scored_at")
        self._dynamic_done_at = int(extra.get("dynamic_done_at", -1))
