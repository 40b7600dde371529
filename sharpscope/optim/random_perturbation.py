"""RS and SA of Ahn, Jadbabaie & Sra (ICML 2024), Algorithms 1 and 2 (SCIENCE.md 1.2, 1.3).

Both take, at iterate ``x``, the gradient ``g = ∇f(x)`` and then::

    if tolerance_branch and not (‖g‖ ≤ ε0):      x ← x − η g                  (plain step)
    else:                                        u  = perturbation direction (unit norm)
                                                 w  = gradient at x + ρ·u
                                                 v  = w − (⟨w, g⟩/‖g‖²) g     (project=True)
                                                 x ← x − η g − η′ v

* RS (randomly smoothed): ``u ~ Unif(S^{d−1})``, ``w = ∇f(x + ρu)``. In expectation
  ``E ∇f(x + ρu) = ∇f(x) + (ρ²/2) ∇(tr ∇²f / d) + O(ρ³)``: the perturbed step descends the
  normalised trace orthogonally to ∇f.
* SA (sharpness-aware): draw ``B`` examples ``I`` uniformly without replacement and a sign
  ``σ = ±1``; ``u = σ ∇f_I(x)/‖∇f_I(x)‖`` and ``w = ∇f_I(x + ρu)`` on the **same** examples.
  ``B = 1`` is the per-example algorithm of the paper; ``B > 1`` is the mini-batch reading used
  in its experiments ([NF]). If ``∇f_I(x) = 0`` exactly, the direction of ``∇f_I(x + ξ)`` with a
  random ``ξ`` of norm ``xi_norm`` is used (Remark 2), falling back to ``ξ/‖ξ‖`` if that is zero too.

The algorithms' displays were not retrievable, so these readings are options ([NF], the
documented reading is the default):

* ``project=True`` — remove the component of ``w`` along ``g`` (RS: [P] prose; SA: [NF]).
  With ``g = 0`` nothing can be removed and ``v = w``.
* ``tolerance_branch=True`` — plain GD step while ‖g‖ > ε0 (for SA: [NF], assumed as in RS);
  ``False`` perturbs at every step and ignores ``eps0``.
* ``inclusive=True`` — the perturbed branch is taken when ``‖g‖ ≤ ε0`` (``False``: ``< ε0``).
* ``lr_perturb`` — η′, the separate step size of ``v``; ``None`` means η′ = η.
* ``eps0`` — the gradient-norm tolerance ε0 (required; its values in the paper are [NF]);
  ``math.inf`` perturbs at every step, as does ``tolerance_branch=False``.
* ``include_gradient_step=True`` — the perturbed step is ``x − η g − η′ v``; ``False`` gives
  ``x − η′ v``.

The returned iterate is the last one (the paper's uniformly random output iterate is an
analysis device). Randomness comes only from an explicit CPU ``torch.Generator`` (``generator``
or ``seed``), whose state is saved by ``state_dict()``; draws are made in float64 and cast.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from sharpscope.errors import ConfigError
from sharpscope.optim._base import (
    Closure,
    PerturbedOptimizer,
    call_closure,
    global_norm,
    make_generator,
    require_closure,
)
from sharpscope.optim.batchnorm import frozen_bn_stats
from sharpscope.validation import check_bool, check_int, check_real

__all__ = ["RS", "SA", "StepRecord", "sample_unit_sphere"]


def sample_unit_sphere(like: Sequence[Tensor], generator: torch.Generator) -> list[Tensor]:
    """A uniform unit vector of ``S^{d−1}`` split like ``like``: i.i.d. N(0, 1) over all
    coordinates (drawn on the CPU in float64, in order), divided by the joint norm, then cast to
    each tensor's dtype and device."""
    draws = [torch.randn(t.shape, generator=generator, dtype=torch.float64) for t in like]
    norm = math.sqrt(sum(float(d.pow(2).sum()) for d in draws))
    return [(d / norm).to(device=t.device, dtype=t.dtype) for d, t in zip(draws, like)]


@dataclass(frozen=True)
class StepRecord:
    """What the last step did: branch, ‖∇f(x)‖, SA's sign and examples, degenerate direction."""

    perturbed: bool
    grad_norm: float
    sign: int | None = None
    indices: tuple[int, ...] | None = None
    degenerate: bool = False


class _RandomPerturbation(PerturbedOptimizer):
    """Shared part of RS and SA: tolerance branch, projection, the two step sizes."""

    def __init__(self, params: Any, lr: float, lr_perturb: float | None, rho: float, eps0: float, *,
                 project: bool, tolerance_branch: bool, inclusive: bool, include_gradient_step: bool,
                 generator: torch.Generator | None, seed: int, model: nn.Module | None) -> None:
        lr = check_real("lr", lr, low=0.0)
        lr_perturb = lr if lr_perturb is None else check_real("lr_perturb", lr_perturb, low=0.0)
        rho = check_real("rho", rho, low=0.0)
        self.eps0 = check_real("eps0", eps0, low=0.0, allow_inf=True)
        for name, flag in (("project", project), ("tolerance_branch", tolerance_branch),
                           ("inclusive", inclusive), ("include_gradient_step", include_gradient_step)):
            check_bool(name, flag)
        self.project, self.tolerance_branch = project, tolerance_branch
        self.inclusive, self.include_gradient_step = inclusive, include_gradient_step
        super().__init__(params, {"lr": lr, "lr_perturb": lr_perturb, "rho": rho}, model=model)
        self.generator = make_generator(generator, seed)
        self.last_step: StepRecord | None = None

    def _grads(self) -> list[Tensor]:
        """Copies of the current gradients (zeros where a parameter has none)."""
        return [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in self._params()]

    def _take_perturbed_branch(self, grad_norm: float) -> bool:
        if not self.tolerance_branch:
            return True
        return grad_norm <= self.eps0 if self.inclusive else grad_norm < self.eps0

    def _scaled(self, direction: list[Tensor], factor: float, key: str) -> list[Tensor]:
        """``factor · group[key] · direction`` per parameter."""
        out, i = [], 0
        for group in self.param_groups:
            for _ in group["params"]:
                out.append(direction[i] * (factor * float(group[key])))
                i += 1
        return out

    def _gradient_at(self, closure: Closure, shift: list[Tensor]) -> list[Tensor]:
        """Gradient that ``closure`` computes at ``x + shift``; ``x`` is restored exactly."""
        self._perturb(self._params(), shift)
        self._perturbed = True
        try:
            with frozen_bn_stats(self.model):
                call_closure(closure)
            return self._grads()
        finally:
            self._restore()
            self._perturbed = False

    @torch.no_grad()
    def _update(self, g: list[Tensor], g_norm: float, w: list[Tensor] | None) -> None:
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
                    p.add_(w[i], alpha=-float(group["lr_perturb"]))
                i += 1
        self.num_steps += 1

    def _full_gradient(self, closure: Closure) -> tuple[Any, list[Tensor], float]:
        loss = call_closure(closure)
        g = self._grads()
        return loss, g, float(global_norm(g, 2.0)) if g else 0.0


class RS(_RandomPerturbation):
    """Randomly smoothed perturbation (Algorithm 1): ``w = ∇f(x + ρu)``, ``u ~ Unif(S^{d−1})``.

    ``step(closure)``: ``closure()`` zeroes grads, evaluates the objective ``f`` (full batch in
    the paper, a fixed mini-batch in its experiments), calls ``backward()`` and returns the loss.
    It is called at ``x`` and, on the perturbed branch, at ``x + ρu``; it must evaluate the same
    objective both times. Returns the loss at ``x``. See the module docstring for the options
    ([NF] readings: ``project``, ``tolerance_branch``, ``inclusive``, ``lr_perturb`` (η′),
    ``include_gradient_step``). ``model`` (optional) keeps BatchNorm statistics from the first
    pass only.
    """

    def __init__(self, params: Any, lr: float, lr_perturb: float | None, rho: float, eps0: float, *,
                 project: bool = True, tolerance_branch: bool = True,
                 inclusive: bool = True, include_gradient_step: bool = True,
                 generator: torch.Generator | None = None, seed: int = 0,
                 model: nn.Module | None = None) -> None:
        super().__init__(params, lr, lr_perturb, rho, eps0, project=project, tolerance_branch=tolerance_branch,
                         inclusive=inclusive, include_gradient_step=include_gradient_step,
                         generator=generator, seed=seed, model=model)

    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> Any:  # type: ignore[override]
        closure = require_closure(closure, "RS.step()",
                                  "pass one that zeroes grads, computes the loss, calls backward() and returns it")
        loss, g, g_norm = self._full_gradient(closure)
        if not self._take_perturbed_branch(g_norm):
            self._update(g, g_norm, None)
            self.last_step = StepRecord(perturbed=False, grad_norm=g_norm)
            return loss
        u = sample_unit_sphere(self._params(), self.generator)
        w = self._gradient_at(closure, self._scaled(u, 1.0, "rho"))
        self._update(g, g_norm, w)
        self.last_step = StepRecord(perturbed=True, grad_norm=g_norm)
        return loss


class SA(_RandomPerturbation):
    """Sharpness-aware perturbation (Algorithm 2) with examples drawn by the optimizer.

    ``step(closure, example_closure)``: ``closure()`` as in :class:`RS` (gradient of ``f`` at
    ``x``); ``example_closure(indices)`` zeroes grads, evaluates the mean loss over the examples
    ``indices`` (a LongTensor of ``batch_size`` distinct indices in ``[0, num_examples)``), calls
    ``backward()`` and returns it. The optimizer draws ``indices`` and the sign from its generator
    (in that order, then ``ξ`` if needed), so a run is reproducible from ``seed`` and resumable
    from ``state_dict()``. ``example_closure`` is called at ``x`` and at ``x + ρσu`` with the same
    indices (plus once at ``x + ξ`` in the degenerate case), and never on the plain branch.
    """

    def __init__(self, params: Any, lr: float, lr_perturb: float | None, rho: float, eps0: float, *,
                 num_examples: int, batch_size: int = 1,
                 project: bool = True, tolerance_branch: bool = True, inclusive: bool = True,
                 include_gradient_step: bool = True, xi_norm: float = 1e-6,
                 generator: torch.Generator | None = None, seed: int = 0,
                 model: nn.Module | None = None) -> None:
        super().__init__(params, lr, lr_perturb, rho, eps0, project=project, tolerance_branch=tolerance_branch,
                         inclusive=inclusive, include_gradient_step=include_gradient_step,
                         generator=generator, seed=seed, model=model)
        self.num_examples = check_int("num_examples", num_examples, low=1)
        self.batch_size = check_int("batch_size", batch_size, low=1)
        if self.batch_size > self.num_examples:
            raise ConfigError(f"batch_size ({batch_size}) must be <= num_examples ({num_examples})")
        self.xi_norm = check_real("xi_norm", xi_norm, low=0.0, low_open=True)

    @torch.no_grad()
    def step(self, closure: Closure | None = None,  # type: ignore[override]
             example_closure: Callable[[Tensor], Any] | None = None) -> Any:
        closure = require_closure(closure, "SA.step()",
                                  "pass closure (full objective) and example_closure(indices)")
        example_closure = require_closure(
            example_closure, "SA.step()",
            "pass example_closure(indices) that zeroes grads, computes the mean loss over those "
            "examples, calls backward() and returns it",
        )
        loss, g, g_norm = self._full_gradient(closure)
        if not self._take_perturbed_branch(g_norm):
            self._update(g, g_norm, None)
            self.last_step = StepRecord(perturbed=False, grad_norm=g_norm)
            return loss

        idx = torch.randperm(self.num_examples, generator=self.generator)[: self.batch_size]
        sign = 1 if int(torch.randint(0, 2, (1,), generator=self.generator)) == 1 else -1
        params = self._params()
        with frozen_bn_stats(self.model):
            call_closure(lambda: example_closure(idx))
        gi = self._grads()
        gi_norm = float(global_norm(gi, 2.0))
        degenerate = gi_norm == 0.0
        if degenerate:  # Remark 2: direction of ∇f_I(x + ξ), ‖ξ‖ = xi_norm
            xi = [t * self.xi_norm for t in sample_unit_sphere(params, self.generator)]
            gi = self._gradient_at(lambda: example_closure(idx), xi)
            gi_norm = float(global_norm(gi, 2.0))
            if gi_norm == 0.0:
                gi, gi_norm = xi, self.xi_norm
        u = [t / gi_norm for t in gi]
        w = self._gradient_at(lambda: example_closure(idx), self._scaled(u, float(sign), "rho"))
        self._update(g, g_norm, w)
        self.last_step = StepRecord(perturbed=True, grad_norm=g_norm, sign=sign,
                                    indices=tuple(int(i) for i in idx), degenerate=degenerate)
        return loss
