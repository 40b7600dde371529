"""RS and SA of Ahn, Jadbabaie & Sra (ICML 2024), Algorithms 1 and 2.

Both take, at iterate ``x``, the gradient ``g = ∇f(x)`` and then::

    if tolerance_branch and not (‖g‖ ≤ ε0):      x ← x − η g                  (plain step)
    else:                                        u  = perturbation direction (unit norm)
                                                 w  = gradient at x + ρ·u
                                                 v  = w − (⟨w, g⟩/‖g‖²) g     (project=True)
                                                 x ← x − η g − η′ v

* RS (randomly smoothed): ``u ~ Unif(S^{d−1})``, ``w = ∇f(x + ρu)``. In expectation
  ``E ∇f(x + ρu) = ∇f(x) + (ρ²/2) ∇(tr ∇²f / d) + O(ρ³)``: the perturbed step descends the
  normalised trace orthogonally to ∇f.
* SA (sharpness-aware): a sign ``σ = ±1`` and a perturbation batch ``I`` of ``B`` examples;
  ``u = σ ∇f_I(x)/‖∇f_I(x)‖`` and ``w = ∇f_I(x + ρu)`` on the **same** examples.
  ``B = 1`` is the per-example algorithm of the paper; ``B > 1`` is the mini-batch reading used
  in its experiments. If ``∇f_I(x) = 0`` exactly, the direction of ``∇f_I(x + ξ)`` with a
  random ``ξ`` of norm ``xi_norm`` is used (Remark 2), falling back to ``ξ/‖ξ‖`` if that is zero too.

The paper leaves these readings open, so each is an option (the default is the reading
documented in ``docs/conventions.md``):

* ``perturbation_batch`` — which examples ``I`` the perturbation uses: ``"same"`` (the batch the
  closure evaluates, i.e. the descent mini-batch; ``∇f_I(x) = ∇f(x)``) or ``"independent"`` (``B``
  fresh examples drawn uniformly without replacement by the optimizer and evaluated through
  ``example_closure(indices)``). Defaults: RS ``"same"``, SA ``"independent"``.
* ``difference=False`` — ``True`` uses ``w − ∇f_I(x)`` in place of ``w``: the theory assumes
  ``∇f_i ≈ 0`` on the minimizer set, which cross entropy never satisfies, and the difference
  removes the zeroth-order term. With the projection and ``perturbation_batch="same"``
  (``∇f_I(x) = ∇f(x)`` is projected out anyway) it changes nothing.
* ``batch_scaling="none"`` — ``"rho"`` multiplies ρ by ``√(B/reference_batch)``; ``"rho+lr"`` multiplies
  ρ and η′ by it (:func:`batch_scaled`). For ``B`` examples with roughly orthogonal per-example
  gradients of similar norm ``a``, ``‖∇f_I‖ ≈ a/√B``, so a step of ρ along ``∇f_I/‖∇f_I‖`` moves
  each example's output by ``≈ ρ a/√B`` and ``‖w‖`` grows like ``1/√B``: the rule keeps both at
  their size at ``B = reference_batch``.

* ``project=True`` — remove the component of ``w`` along ``g`` (RS: stated in the prose; SA: assumed).
  With ``g = 0`` nothing can be removed and ``v = w``.
* ``tolerance_branch=True`` — plain GD step while ‖g‖ > ε0 (for SA: assumed as in RS);
  ``False`` perturbs at every step and ignores ``eps0``.
* ``inclusive=True`` — the perturbed branch is taken when ``‖g‖ ≤ ε0`` (``False``: ``< ε0``).
* ``lr_perturb`` — η′, the separate step size of ``v``; ``None`` means η′ = η.
* ``eps0`` — the gradient-norm tolerance ε0 (required; the paper gives no values);
  ``math.inf`` perturbs at every step, as does ``tolerance_branch=False``.
* ``include_gradient_step=True`` — the perturbed step is ``x − η g − η′ v``; ``False`` gives
  ``x − η′ v``.

The returned iterate is the last one (the paper's uniformly random output iterate is an
analysis device). Randomness comes only from an explicit CPU ``torch.Generator`` (``generator``
or ``seed``), whose state is saved by ``state_dict()``; draws are made in float64 and cast.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from sharpscope.errors import ConfigError
from sharpscope.optim._base import (
    Closure,
    ExampleClosure,
    PerturbedOptimizer,
    call_closure,
    global_norm,
    make_generator,
    require_closure,
)
from sharpscope.optim.batchnorm import frozen_bn_stats, running_stats_restored_on_error
from sharpscope.validation import check_bool, check_choice, check_int, check_real

__all__ = ["BATCH_SCALINGS", "PERTURBATION_BATCHES", "RS", "SA", "StepRecord", "batch_scaled", "sample_unit_sphere"]

PERTURBATION_BATCHES = ("same", "independent")
BATCH_SCALINGS = ("none", "rho", "rho+lr")


def sample_unit_sphere(like: Sequence[Tensor], generator: torch.Generator) -> list[Tensor]:
    """A uniform unit vector of ``S^{d−1}`` split like ``like``: i.i.d. N(0, 1) over all
    coordinates (drawn on the CPU in float64, in order), divided by the joint norm, then cast to
    each tensor's dtype and device."""
    draws = [torch.randn(t.shape, generator=generator, dtype=torch.float64) for t in like]
    norm = math.sqrt(sum(float(d.pow(2).sum()) for d in draws))
    return [(d / norm).to(device=t.device, dtype=t.dtype) for d, t in zip(draws, like)]


def batch_scaled(rho: float, lr_perturb: float, batch: int, reference_batch: int, rule: str) -> tuple[float, float]:
    """``(ρ_B, η′_B)`` under ``rule``: ``"none"`` leaves both; ``"rho"`` gives ``ρ·√(B/B_ref)``;
    ``"rho+lr"`` gives ``(ρ·√(B/B_ref), η′·√(B/B_ref))``.

    >>> batch_scaled(0.05, 0.01, 32, 128, "rho+lr")
    (0.025, 0.005)
    """
    check_choice("batch_scaling", rule, BATCH_SCALINGS)
    factor = math.sqrt(check_int("batch", batch, low=1) / check_int("reference_batch", reference_batch, low=1))
    if rule == "none":
        return rho, lr_perturb
    return rho * factor, lr_perturb * factor if rule == "rho+lr" else lr_perturb


@dataclass(frozen=True)
class StepRecord:
    """What the last step did: branch, ‖∇f(x)‖, SA's sign, the perturbation examples (None: the
    closure's batch), a degenerate SA direction, and the ρ and η′ used (after batch scaling)."""

    perturbed: bool
    grad_norm: float
    sign: int | None = None
    indices: tuple[int, ...] | None = None
    degenerate: bool = False
    rho: float | None = None
    lr_perturb: float | None = None


class _RandomPerturbation(PerturbedOptimizer):
    """Shared part of RS and SA: tolerance branch, perturbation batch, projection, the two step sizes.

    Subclasses define the direction ``u`` (:meth:`_direction`). Steps follow the one protocol of
    :class:`~sharpscope.optim.PerturbedOptimizer`: ``step(closure)`` evaluates ``∇f(x)`` with the
    closure first; :meth:`step_from_gradient` takes it from ``.grad``.
    """

    def __init__(self, params: Any, lr: float, lr_perturb: float | None, rho: float, eps0: float, *,
                 project: bool = True, tolerance_branch: bool = True, inclusive: bool = True,
                 include_gradient_step: bool = True, perturbation_batch: str = "same", difference: bool = False,
                 batch_size: int | None = None, num_examples: int | None = None, batch_scaling: str = "none",
                 reference_batch: int = 128, example_closure: ExampleClosure | None = None,
                 generator: torch.Generator | None = None, seed: int = 0, model: nn.Module | None = None) -> None:
        lr = check_real("lr", lr, low=0.0)
        lr_perturb = lr if lr_perturb is None else check_real("lr_perturb", lr_perturb, low=0.0)
        rho = check_real("rho", rho, low=0.0)
        self.eps0 = check_real("eps0", eps0, low=0.0, allow_inf=True)
        for name, flag in (("project", project), ("tolerance_branch", tolerance_branch),
                           ("inclusive", inclusive), ("include_gradient_step", include_gradient_step),
                           ("difference", difference)):
            check_bool(name, flag)
        check_choice("perturbation_batch", perturbation_batch, PERTURBATION_BATCHES)
        self.project, self.tolerance_branch = project, tolerance_branch
        self.inclusive, self.include_gradient_step = inclusive, include_gradient_step
        self.perturbation_batch, self.difference = perturbation_batch, difference
        self.num_examples = check_int("num_examples", num_examples, low=1, optional=True)
        self.batch_size = check_int("batch_size", batch_size, low=1, optional=True)
        if perturbation_batch == "independent":
            if self.num_examples is None or self.batch_size is None:
                raise ConfigError("perturbation_batch='independent' needs num_examples and batch_size")
            if self.batch_size > self.num_examples:
                raise ConfigError(f"batch_size ({batch_size}) must be <= num_examples ({num_examples})")
        self.batch_scaling = batch_scaling
        self.reference_batch = check_int("reference_batch", reference_batch, low=1)
        if batch_scaling != "none" and self.batch_size is None:
            raise ConfigError(f"batch_scaling={batch_scaling!r} needs batch_size (the perturbation batch B)")
        batch_scaled(rho, lr_perturb, self.batch_size or 1, self.reference_batch, batch_scaling)  # validates the rule
        super().__init__(params, {"lr": lr, "lr_perturb": lr_perturb, "rho": rho}, model=model)
        self.generator: torch.Generator = make_generator(generator, seed)
        self.example_closure: ExampleClosure | None = None
        if example_closure is not None:
            self.set_example_closure(example_closure)
        self.last_step: StepRecord | None = None

    def set_example_closure(self, example_closure: ExampleClosure) -> None:
        """Set ``example_closure(indices)``: zero grads, mean loss over the training examples
        ``indices`` (a LongTensor), ``backward()``, return the loss. Used with
        ``perturbation_batch="independent"``."""
        if not callable(example_closure):
            raise ConfigError(f"example_closure must be callable, got {type(example_closure).__name__}")
        self.example_closure = example_closure

    def _grads(self) -> list[Tensor]:
        """Copies of the current gradients (zeros where a parameter has none)."""
        return [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in self._params()]

    def _take_perturbed_branch(self, grad_norm: float) -> bool:
        if not self.tolerance_branch:
            return True
        return grad_norm <= self.eps0 if self.inclusive else grad_norm < self.eps0

    def _factors(self) -> tuple[float, float]:
        """Multipliers of each group's ρ and η′ from the batch-scaling rule."""
        if self.batch_scaling == "none":
            return 1.0, 1.0
        return batch_scaled(1.0, 1.0, self.batch_size or 1, self.reference_batch, self.batch_scaling)

    def _scaled(self, direction: list[Tensor], factor: float, key: str) -> list[Tensor]:
        """``factor · group[key] · direction`` per parameter."""
        out, i = [], 0
        for group in self.param_groups:
            for _ in group["params"]:
                out.append(direction[i] * (factor * float(group[key])))
                i += 1
        return out

    def _gradient_at(self, closure: Closure, shift: list[Tensor]) -> list[Tensor]:
        """Gradient that ``closure`` computes at ``x + shift``; ``x`` is restored exactly, also if it raises."""
        self._perturb(self._params(), shift)
        self._perturbed = True
        try:
            return self._gradient_here(closure)
        finally:
            self._restore()
            self._perturbed = False

    def _gradient_here(self, closure: Closure) -> list[Tensor]:
        """Gradient that ``closure`` computes at ``x`` (BatchNorm statistics untouched)."""
        with frozen_bn_stats(self.model):
            call_closure(closure)
        return self._grads()

    @torch.no_grad()
    def _update(self, g: list[Tensor], g_norm: float, w: list[Tensor] | None, lr_factor: float = 1.0) -> None:
        """``x ← x − η g`` (w is None) or ``x ← x − η g·[include] − η′ Proj⊥_g w``."""
        if w is not None and self.project and g_norm > 0.0:
            coef = float(sum(torch.dot(a.reshape(-1), b.reshape(-1)) for a, b in zip(w, g))) / g_norm**2
            w = [a - coef * b for a, b in zip(w, g)]
        i = 0
        for group in self.param_groups:
            for p in group["params"]:
                if w is None or self.include_gradient_step:
                    p.add_(g[i], alpha=-float(group["lr"]))
                if w is not None:
                    p.add_(w[i], alpha=-float(group["lr_perturb"]) * lr_factor)
                i += 1
        self.num_steps += 1

    def _batch_closure(self) -> tuple[Closure | None, Tensor | None]:
        """The perturbation batch: ``(None, None)`` for the closure's own batch, else a closure over
        ``B`` indices drawn now from the generator, and the indices."""
        if self.perturbation_batch == "same":
            return None, None
        assert self.num_examples is not None and self.batch_size is not None and self.example_closure is not None
        idx = torch.randperm(self.num_examples, generator=self.generator)[: self.batch_size]
        fn = self.example_closure
        return (lambda: fn(idx)), idx

    def _require_example_closure(self) -> None:
        """Raise, before any work, when the independent perturbation batch has no example closure."""
        if self.perturbation_batch == "independent" and self.example_closure is None:
            raise ConfigError(
                f"{type(self).__name__} with perturbation_batch='independent' needs an example_closure(indices) "
                "that zeroes grads, computes the mean loss over those examples, calls backward() and returns it "
                "(constructor argument or set_example_closure())")

    def _direction(self, closure: Closure, batch: Closure, g: list[Tensor], g_norm: float
                   ) -> tuple[list[Tensor], list[Tensor] | None, dict[str, Any]]:
        """Unit direction ``u``, ``∇f_I(x)`` if it was computed on the way, and record fields."""
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> Any:
        """One step: ``closure()`` (zero grads, loss, ``backward()``, return the loss) gives ``∇f(x)``,
        then the plain or the perturbed update. Returns the loss at ``x``."""
        closure = require_closure(closure, f"{type(self).__name__}.step()",
                                  "pass one that zeroes grads, computes the loss, calls backward() and returns it")
        self._require_example_closure()
        with running_stats_restored_on_error(self.model):  # a failed step leaves no BatchNorm update either
            loss = call_closure(closure)
            self._step_with_gradient(closure)
        return loss

    @torch.no_grad()
    def step_from_gradient(self, closure: Closure | None = None) -> None:
        """The step when ``.grad`` already holds ``∇f(x)`` (the caller ran the first backward pass)."""
        closure = require_closure(closure, f"{type(self).__name__}.step_from_gradient()",
                                  "pass the closure that produced the gradients in .grad")
        self._require_example_closure()
        self._step_with_gradient(closure)

    def _step_with_gradient(self, closure: Closure) -> None:
        g = self._grads()
        g_norm = float(global_norm(g, 2.0)) if g else 0.0
        if not self._take_perturbed_branch(g_norm):
            self._update(g, g_norm, None)
            self.last_step = StepRecord(perturbed=False, grad_norm=g_norm)
            return
        rho_factor, lr_factor = self._factors()
        batch, idx = self._batch_closure()
        batch = batch or closure
        u, g_batch, fields = self._direction(closure, batch, g, g_norm)
        w = self._gradient_at(batch, self._scaled(u, rho_factor, "rho"))
        if self.difference:
            if g_batch is None:
                g_batch = g if batch is closure else self._gradient_here(batch)
            w = [a - b for a, b in zip(w, g_batch)]
        self._update(g, g_norm, w, lr_factor)
        group = self.param_groups[0]
        self.last_step = StepRecord(perturbed=True, grad_norm=g_norm,
                                    indices=None if idx is None else tuple(int(i) for i in idx),
                                    rho=float(group["rho"]) * rho_factor,
                                    lr_perturb=float(group["lr_perturb"]) * lr_factor, **fields)


class RS(_RandomPerturbation):
    """Randomly smoothed perturbation (Algorithm 1): ``w = ∇f_I(x + ρu)``, ``u ~ Unif(S^{d−1})``.

    ``step(closure)``: ``closure()`` zeroes grads, evaluates the objective ``f`` (full batch in
    the paper, a mini-batch in its experiments), calls ``backward()`` and returns the loss. It is
    called at ``x`` and, on the perturbed branch with ``perturbation_batch="same"`` (the default),
    at ``x + ρu``; it must evaluate the same objective both times. Returns the loss at ``x``.
    ``perturbation_batch="independent"`` evaluates ``w`` on ``batch_size`` fresh examples through
    ``example_closure`` (drawn before ``u``). See the module docstring for the other options.
    ``model`` (optional) keeps BatchNorm statistics from the first pass only.
    """

    def _direction(self, closure: Closure, batch: Closure, g: list[Tensor], g_norm: float
                   ) -> tuple[list[Tensor], list[Tensor] | None, dict[str, Any]]:
        return sample_unit_sphere(self._params(), self.generator), None, {}


class SA(_RandomPerturbation):
    """Sharpness-aware perturbation (Algorithm 2).

    ``step(closure)``: ``closure()`` as in :class:`RS` (gradient of ``f`` at ``x``). With
    ``perturbation_batch="independent"`` (the default) the optimizer draws ``batch_size`` distinct
    indices in ``[0, num_examples)`` and calls ``example_closure(indices)`` (given to the
    constructor or :meth:`set_example_closure`), which zeroes grads, evaluates the mean loss over
    those examples, calls ``backward()`` and returns it, at ``x`` and at ``x + ρσu`` (plus once
    at ``x + ξ`` in the degenerate case), never on the plain branch. With ``"same"`` the closure's
    own batch is the perturbation batch. Draws come from the generator in the order indices,
    sign, ``ξ``, so a run is reproducible from ``seed`` and resumable from ``state_dict()``.
    """

    def __init__(self, params: Any, lr: float, lr_perturb: float | None, rho: float, eps0: float, *,
                 batch_size: int | None = 1, perturbation_batch: str = "independent", xi_norm: float = 1e-6,
                 **options: Any) -> None:
        """The options of :class:`RS` (``options``), with a perturbation batch of one fresh example by default."""
        super().__init__(params, lr, lr_perturb, rho, eps0, batch_size=batch_size,
                         perturbation_batch=perturbation_batch, **options)
        self.xi_norm = check_real("xi_norm", xi_norm, low=0.0, low_open=True)

    def _direction(self, closure: Closure, batch: Closure, g: list[Tensor], g_norm: float
                   ) -> tuple[list[Tensor], list[Tensor] | None, dict[str, Any]]:
        sign = 1 if int(torch.randint(0, 2, (1,), generator=self.generator)) == 1 else -1
        gi = g if batch is closure else self._gradient_here(batch)
        g_batch = gi
        gi_norm = g_norm if batch is closure else float(global_norm(gi, 2.0))
        degenerate = gi_norm == 0.0
        if degenerate:  # Remark 2: direction of ∇f_I(x + ξ), ‖ξ‖ = xi_norm
            xi = [t * self.xi_norm for t in sample_unit_sphere(self._params(), self.generator)]
            gi = self._gradient_at(batch, xi)
            gi_norm = float(global_norm(gi, 2.0))
            if gi_norm == 0.0:
                gi, gi_norm = xi, self.xi_norm
        u = [(t / gi_norm) * sign for t in gi]
        return u, g_batch, {"sign": sign, "degenerate": degenerate}
