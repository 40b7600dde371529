"""Shared machinery of the perturbation optimizers (SAM family, RS, SA).

Two layers:

* :class:`PerturbedOptimizer` — what every variant needs: move the weights to ``w + ε`` in place
  and put them back *exactly* (a saved copy, not ``w + ε − ε``), call closures with gradients
  enabled, own an explicit ``torch.Generator``, and save/load extra state (masks, counters,
  generator) next to the usual optimizer state.
* :class:`TwoPassOptimizer` — the SAM protocol on top of any ``torch.optim`` base optimizer:
  ``first_step()`` (perturb), ``second_step()`` (restore, base step), ``step(closure)`` (both
  passes), ``m_sharpness_step`` (per-group perturbations), GradScaler and DDP integration.
  Subclasses only supply the perturbation ``ε`` (method ``_perturbation``) and optional hooks.

One step protocol for every optimizer here, torch style:

* ``step(closure)`` — ``closure()`` zeroes the gradients, computes the loss, calls
  ``backward()`` and returns the loss; the optimizer calls it first at ``w`` and then at every
  point it moves to, and returns the loss at ``w``.
* ``step_from_gradient(closure)`` — the same step when the caller has already run the first
  backward pass (``.grad`` holds ``∇L(w)``): the closure is called only at the moved points.
* If anything raises while the weights are moved (a closure interrupted by Ctrl-C or out of
  memory), the weights are put back to ``w`` and the optimizer is no longer perturbed before the
  exception propagates; :meth:`PerturbedOptimizer.restore` does the same for callers of
  ``first_step``/``second_step``. With ``model`` given, ``step(closure)`` and
  ``m_sharpness_step`` also put back the BatchNorm running statistics the failed step's first
  pass had updated; ``step_from_gradient`` cannot (its first pass ran before the call).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import Tensor, nn

from sharpscope.curvature import sampling
from sharpscope.errors import ConfigError, DataError, SharpscopeError
from sharpscope.optim.batchnorm import frozen_bn_stats, running_stats_restored_on_error
from sharpscope.validation import check_int, check_seed, check_type, shown

__all__ = ["maybe_no_sync", "PerturbedOptimizer", "TwoPassOptimizer"]

Closure = Callable[[], Any]
Tensors = list[Tensor] | tuple[Tensor, ...]  # what torch._foreach_* ops take (and return, as tuples)
ExampleClosure = Callable[[Tensor], Any]
LossFn = Callable[[nn.Module, Tensor, Tensor], Tensor]
_EXTRA_KEY = "sharpscope"


# ----------------------------------------------------------------------------- small helpers
@contextmanager
def maybe_no_sync(model: nn.Module | None) -> Iterator[None]:
    """``model.no_sync()`` when ``model`` is DistributedDataParallel, else a no-op context.

    Run the *first* SAM pass (forward **and** backward) inside it: each rank then perturbs with
    its own local gradient (per-replica, m-sharpness with m = per-rank batch, as in the official
    JAX code) and no gradient all-reduce is spent on a gradient that is only used for ``ε``.
    """
    if isinstance(model, nn.parallel.DistributedDataParallel):
        with model.no_sync():
            yield
    else:
        yield


def make_generator(generator: torch.Generator | None, seed: int) -> torch.Generator:
    """The given CPU generator, or a fresh one seeded with ``seed`` (never the global RNG)."""
    check_type("generator", generator, torch.Generator, "a torch.Generator", optional=True)
    return sampling.make_generator(generator if generator is not None else check_seed("seed", seed))


def check_params(params: Any) -> list[Any]:
    """``params`` as a list if it holds what a torch optimizer takes: tensors, or param-group dicts whose
    ``"params"`` hold tensors; else a :class:`ConfigError` naming ``params`` (before torch's deep error).
    An empty list is refused: an optimizer of nothing is a mistake (a frozen model, a wrong filter)."""
    if isinstance(params, (Tensor, str, bytes, Mapping)) or not isinstance(params, Iterable):
        raise ConfigError(f"params must be an iterable of tensors or of param-group dicts (model.parameters()), "
                          f"got {type(params).__name__}", argument="params")
    items = list(params)
    if not items:
        raise ConfigError("params is empty: no parameter to optimize (is every parameter frozen, or did a "
                          "filter select none?)", argument="params")
    for item in items:
        group = item.get("params") if isinstance(item, Mapping) else [item]
        group = [group] if isinstance(group, Tensor) else group
        if not isinstance(group, Iterable) or isinstance(group, (str, bytes)) or \
                not all(isinstance(t, Tensor) for t in group):
            raise ConfigError(f"params must hold tensors (or param-group dicts of them), got "
                              f"{type(item).__name__}" + (" without tensors under 'params'" if isinstance(item, Mapping)
                                                         else ""), argument="params")
    return items


def _named_argument(message: str, kwargs: dict[str, Any]) -> str | None:
    """The keyword argument a base optimizer's error message is about (``lr`` for "Invalid learning
    rate"), if it can be told; None otherwise."""
    words = {"learning rate": "lr", "momentum": "momentum", "weight_decay": "weight_decay", "epsilon": "eps",
             "beta": "betas", "dampening": "dampening", "nesterov": "nesterov"}
    named = [arg for word, arg in words.items() if word in message.lower() and arg in kwargs]
    named += [k for k in kwargs if f"'{k}'" in message]
    return named[0] if named else next(iter(kwargs)) if len(kwargs) == 1 else None


def call_closure(closure: Closure) -> Any:
    """Run a closure with autograd enabled (``step`` itself runs under ``no_grad``)."""
    with torch.enable_grad():
        return closure()


def require_closure(closure: Any, where: str, hint: str) -> Closure:
    """Return ``closure`` if callable, else a ConfigError that says how to call ``where``."""
    if closure is None:
        raise ConfigError(f"{where} needs a closure: {hint}")
    if not callable(closure):
        raise ConfigError(f"{where}: closure must be callable, got {type(closure).__name__}")
    return closure


def global_norm(tensors: Sequence[Tensor], q: float) -> Tensor:
    """``‖concat(tensors)‖_q`` (q = inf gives the max-abs norm), as a 0-d tensor."""
    norms = torch._foreach_norm(list(tensors), q)
    stacked = torch.stack([n.to(norms[0].device) for n in norms])
    return torch.linalg.vector_norm(stacked, q)


# ----------------------------------------------------------------------------- layer 1
class PerturbedOptimizer(torch.optim.Optimizer):
    """Base for optimizers that evaluate gradients at temporarily moved weights.

    Subclasses call :meth:`_perturb` to move ``w → w + ε`` (saving ``w``) and :meth:`_restore` to
    copy ``w`` back bit-for-bit. ``state_dict()`` carries, under the key ``"sharpscope"``, what
    :meth:`_extra_state` returns (by default the generator state, if any, and a step counter).
    """

    generator: torch.Generator | None = None

    def __init__(self, params: Any, defaults: dict[str, Any], *, model: nn.Module | None = None) -> None:
        check_type("model", model, nn.Module, "an nn.Module", optional=True)
        super().__init__(check_params(params), defaults)
        self.model = model
        self._stash: dict[Tensor, Tensor] = {}  # persistent buffers holding w during a perturbation
        self._stashed: list[Tensor] = []        # parameters currently moved
        self._perturbed = False
        self.num_steps = 0

    # -- moving the weights ---------------------------------------------------------------
    @property
    def perturbed(self) -> bool:
        """True between ``first_step()`` and ``second_step()`` (weights are at ``w + ε``)."""
        return self._perturbed

    @torch.no_grad()
    def _perturb(self, params: Sequence[Tensor], eps: Sequence[Tensor]) -> None:
        """Save each parameter, then add its ``ε`` in place."""
        saved = []
        for p in params:
            buf = self._stash.get(p)
            if buf is None or buf.shape != p.shape or buf.dtype != p.dtype or buf.device != p.device:
                buf = torch.empty_like(p, memory_format=torch.preserve_format)
                self._stash[p] = buf
            saved.append(buf)
        if params:
            torch._foreach_copy_(saved, list(params))
            torch._foreach_add_(list(params), list(eps))
        self._stashed = list(params)

    @torch.no_grad()
    def _restore(self) -> None:
        """Copy the saved weights back (exact)."""
        if self._stashed:
            torch._foreach_copy_(self._stashed, [self._stash[p] for p in self._stashed])
        self._stashed = []

    def _params(self) -> list[Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    @torch.no_grad()
    def restore(self) -> None:
        """Put the weights back to ``w`` and leave the perturbed state (no update is taken)."""
        self._restore()
        self._perturbed = False

    def step_from_gradient(self, closure: Closure | None = None) -> None:
        """One step when ``.grad`` already holds the gradient at ``w`` (see the module docstring)."""
        raise NotImplementedError

    # -- state ---------------------------------------------------------------------------
    def _extra_state(self) -> dict[str, Any]:
        extra: dict[str, Any] = {"num_steps": self.num_steps}
        if self.generator is not None:
            extra["generator"] = self.generator.get_state()
        return extra

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        self.num_steps = int(extra.get("num_steps", 0))
        if self.generator is not None and "generator" in extra:
            self.generator.set_state(extra["generator"])

    def _inner_state_dict(self) -> dict[str, Any]:
        return super().state_dict()

    def _inner_load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)

    def state_dict(self) -> dict[str, Any]:
        """Optimizer state plus ``"sharpscope"`` extras; refuses while the weights are perturbed."""
        if self._perturbed:
            raise SharpscopeError(
                f"{type(self).__name__}.state_dict() called between first_step() and second_step(): "
                "the weights are perturbed; save after second_step()"
            )
        sd = dict(self._inner_state_dict())
        sd[_EXTRA_KEY] = self._extra_state()
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict`; the next step is bit-for-bit the uninterrupted one."""
        if self._perturbed:
            raise SharpscopeError(f"{type(self).__name__}.load_state_dict() called while perturbed")
        sd = dict(state_dict)
        extra = sd.pop(_EXTRA_KEY, {})
        self._inner_load_state_dict(sd)
        self._load_extra_state(extra)


# ----------------------------------------------------------------------------- layer 2
class TwoPassOptimizer(PerturbedOptimizer):
    """The SAM two-pass protocol around a base optimizer; subclasses define ``ε``.

    Protocol (``g`` = gradient at ``w`` from the first pass; ``ε`` from :meth:`_perturbation`)::

        first_step():   save w;  w ← w + ε(g)
        second_step():  w ← saved w;  base_optimizer.step()   # consumes ∇L(w + ε)

    Everything the base optimizer does (momentum, Adam moments, weight decay, lr schedules via
    ``param_groups``) applies to the gradient of the second pass. ``param_groups`` and ``state``
    are those of the base optimizer (shared objects), so LR schedulers can be given either.
    """

    def __init__(
        self,
        params: Any,
        base_optimizer: type[torch.optim.Optimizer],
        defaults: dict[str, Any],
        *,
        model: nn.Module | None = None,
        scaler: torch.amp.GradScaler | None = None,
        **base_kwargs: Any,
    ) -> None:
        if not (isinstance(base_optimizer, type) and issubclass(base_optimizer, torch.optim.Optimizer)):
            raise ConfigError(
                "base_optimizer must be a torch.optim.Optimizer subclass (the class, e.g. "
                f"torch.optim.SGD, plus its keyword arguments), got {base_optimizer!r}"
            )
        if issubclass(base_optimizer, PerturbedOptimizer):
            raise ConfigError(f"base_optimizer cannot itself be a perturbation optimizer ({base_optimizer.__name__})")
        if scaler is not None and not isinstance(scaler, torch.amp.GradScaler):
            raise ConfigError(f"scaler must be a torch.amp.GradScaler or None, got {type(scaler).__name__}")
        clash = sorted(set(defaults) & set(base_kwargs))
        if clash:
            raise ConfigError(f"keyword(s) {clash} are used by both {type(self).__name__} and the base optimizer")
        super().__init__(params, {**base_kwargs, **defaults}, model=model)
        try:
            self.base_optimizer = base_optimizer(self.param_groups, **base_kwargs)
        except (TypeError, ValueError) as e:  # torch's own checks: "Invalid learning rate: -1", an unknown keyword
            given = ", ".join(f"{k}={shown(v)}" for k, v in base_kwargs.items())
            raise ConfigError(f"{base_optimizer.__name__} refused its arguments ({given}): {str(e).splitlines()[0]}",
                              argument=_named_argument(str(e), base_kwargs)) from None
        self.param_groups = self.base_optimizer.param_groups
        self.state = self.base_optimizer.state
        self.scaler = scaler
        self._in_scaler_step = False
        self.last_grad_norm: float | None = None
        self.last_perturbation_skipped = False

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to the base optimizer (filling this optimizer's defaults first)."""
        base = self.__dict__.get("base_optimizer")
        if base is None:  # called from torch.optim.Optimizer.__init__
            super().add_param_group(param_group)
            return
        for key, value in self.defaults.items():
            param_group.setdefault(key, value)
        base.add_param_group(param_group)

    # -- hooks ---------------------------------------------------------------------------
    def _perturbation(self, params: list[Tensor], grads: list[Tensor], groups: list[dict[str, Any]],
                      inv_scale: float) -> list[Tensor] | None:
        """``ε`` for ``params`` given their (possibly scaled) first-pass ``grads``.

        ``groups[i]`` is the param group of ``params[i]``; true gradients are ``grads * inv_scale``.
        Return ``None`` to skip the perturbation (e.g. non-finite gradients).
        """
        raise NotImplementedError

    def _after_first_step(self, params: list[Tensor], grads: list[Tensor]) -> None:
        """Called once per step after ``ε`` is computed (weights still at ``w``)."""

    def _after_second_step(self) -> None:
        """Called after the base optimizer step."""

    # -- GradScaler -----------------------------------------------------------------------
    def _inv_scale(self) -> float:
        if self.scaler is not None and self.scaler.is_enabled():
            return 1.0 / float(self.scaler.get_scale())
        return 1.0

    def _backward(self, loss: Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    # -- the protocol ----------------------------------------------------------------------
    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """Move the weights to ``w + ε`` computed from the current gradients, saving ``w``.

        Gradients that are non-finite (e.g. an fp16 overflow under a GradScaler) give no
        perturbation: the weights are left at ``w`` and ``last_perturbation_skipped`` is True.
        """
        if self._perturbed:
            raise SharpscopeError("first_step() called twice without second_step(): the weights are already perturbed")
        self._first_step_impl(run_hook=True)
        if zero_grad:
            self.zero_grad()

    def _first_step_impl(self, run_hook: bool) -> None:
        params, grads, groups = [], [], []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    if p.grad.is_sparse:
                        raise ConfigError(f"{type(self).__name__} does not support sparse gradients")
                    params.append(p)
                    grads.append(p.grad)
                    groups.append(group)
        eps = self._perturbation(params, grads, groups, self._inv_scale()) if params else None
        self.last_perturbation_skipped = eps is None
        if run_hook:
            self._after_first_step(params, grads)
        if eps is None:
            self._stashed = []
        else:
            self._perturb(params, eps)
        self._perturbed = True

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Restore ``w`` exactly and take the base optimizer's step with the current gradients.

        With ``scaler`` the step goes through ``scaler.step`` (unscale unless already done,
        skip on inf/NaN); the weights are restored in every case. Call ``scaler.update()``
        afterwards as usual. Gradient clipping goes between the second backward and this call
        (``scaler.unscale_(sam)`` first when a scaler is used).
        """
        if not self._perturbed:
            raise SharpscopeError("second_step() called without a preceding first_step()")
        self._restore()
        self._perturbed = False
        self._descend()
        if zero_grad:
            self.zero_grad()

    def _descend(self) -> None:
        if self.scaler is not None and self.scaler.is_enabled():
            self._in_scaler_step = True
            try:
                self.scaler.step(self)  # re-enters self.step() below, which runs the base step
            finally:
                self._in_scaler_step = False
        else:
            self.base_optimizer.step()
        self._after_second_step()
        self.num_steps += 1

    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> Any:
        """Full SAM step. ``closure()`` must zero the gradients, compute the loss on the batch,
        call ``backward()`` on it (``scaler.scale(loss).backward()`` with a scaler) and return it.

        The first pass runs inside :func:`maybe_no_sync` (``model`` given and DDP) and the second
        inside :func:`frozen_bn_stats` (``model`` given). Returns the first-pass (unperturbed) loss.
        """
        if self._in_scaler_step:
            return self.base_optimizer.step()
        closure = require_closure(
            closure, f"{type(self).__name__}.step()",
            "pass one that zeroes grads, computes the loss and calls backward(), or call "
            "first_step()/second_step() yourself between two backward passes. With a GradScaler, "
            "call second_step() instead of scaler.step(optimizer).",
        )
        with running_stats_restored_on_error(self.model):  # the first pass's BatchNorm update, undone on failure
            with maybe_no_sync(self.model):
                loss = call_closure(closure)
            self._second_pass(closure)
        return loss

    @torch.no_grad()
    def step_from_gradient(self, closure: Closure | None = None) -> None:
        """The SAM step when ``.grad`` already holds the first-pass gradient: ``first_step()``,
        ``closure()`` at ``w + ε`` (BatchNorm statistics frozen), ``second_step()``."""
        if self._in_scaler_step:
            self.base_optimizer.step()
            return
        closure = require_closure(closure, f"{type(self).__name__}.step_from_gradient()",
                                  "pass the closure that produced the gradients in .grad")
        self._second_pass(closure)

    def _second_pass(self, closure: Closure) -> None:
        self.first_step()
        try:
            with frozen_bn_stats(self.model):
                call_closure(closure)
        except BaseException:
            self.restore()
            raise
        self.second_step()

    def m_sharpness_step(self, model: nn.Module, loss_fn: LossFn, inputs: Tensor, targets: Tensor,
                         m: int) -> Tensor:
        """One step with per-group perturbations (m-sharpness, Foret et al. 3.3).

        The batch is split along dim 0 into groups of ``m`` examples (the last may be smaller).
        For each group ``k`` with ``n_k`` examples: ``g_k = ∇L_k(w)``, ``ε_k = ε(g_k)``, and
        ``∇L_k(w + ε_k)``. The base optimizer then steps with the example-weighted average
        ``Σ_k (n_k/n) ∇L_k(w + ε_k)``. ``loss_fn(model, x, y)`` returns the mean loss over the
        examples it is given. ``m >= n`` is ordinary SAM on the whole batch.

        BatchNorm running statistics are updated by each group's first pass only. If any pass
        raises, the weights, the running statistics and the perturbed state are put back as they
        were before the call (``.grad`` is cleared) and the exception propagates. Under DDP
        all passes but the last group's second one run in ``no_sync``; that last backward
        all-reduces the accumulated weighted gradient, so ranks average their group means.
        Returns the example-weighted mean first-pass loss (detached).
        """
        if self._perturbed:
            raise SharpscopeError("m_sharpness_step() called while the weights are perturbed")
        m = check_int("m", m, low=1)
        check_type("model", model, nn.Module, "a torch.nn.Module")
        check_type("inputs", inputs, Tensor, "a torch.Tensor")
        check_type("targets", targets, Tensor, "a torch.Tensor")
        if not callable(loss_fn):
            raise ConfigError("loss_fn must be callable as loss_fn(model, inputs, targets)", argument="loss_fn")
        if inputs.shape[0] == 0 or inputs.shape[0] != targets.shape[0]:
            raise DataError(f"inputs and targets need the same non-zero batch size, got "
                            f"{inputs.shape[0]} and {targets.shape[0]}")
        chunks = list(zip(inputs.split(m), targets.split(m)))
        self.zero_grad(set_to_none=True)
        try:
            with running_stats_restored_on_error(model):
                total = self._m_sharpness_passes(model, loss_fn, chunks, inputs.shape[0])
        except BaseException:
            self.restore()  # w exactly, and no longer perturbed
            self.zero_grad(set_to_none=True)  # the partial sum of group gradients means nothing
            raise
        with torch.no_grad():
            self._descend()
        return total

    def _m_sharpness_passes(self, model: nn.Module, loss_fn: LossFn, chunks: list[tuple[Tensor, Tensor]],
                            n: int) -> Tensor:
        """Both passes of every group of :meth:`m_sharpness_step`; ``.grad`` ends as the weighted sum."""
        params = self._params()
        total: Tensor | None = None
        for k, (xk, yk) in enumerate(chunks):
            weight = xk.shape[0] / n
            held = [p.grad for p in params]
            for p in params:
                p.grad = None
            with maybe_no_sync(model), torch.enable_grad():
                loss = loss_fn(model, xk, yk)
                self._backward(loss)
            with torch.no_grad():
                self._first_step_impl(run_hook=(k == 0))
            for p, g in zip(params, held):
                p.grad = g
            last = k == len(chunks) - 1
            with frozen_bn_stats(model), (nullcontext() if last else maybe_no_sync(model)), torch.enable_grad():
                self._backward(loss_fn(model, xk, yk) * weight)
            self._restore()
            self._perturbed = False
            contrib = loss.detach() * weight
            total = contrib if total is None else total + contrib
        assert total is not None
        return total

    # -- state ---------------------------------------------------------------------------
    def _inner_state_dict(self) -> dict[str, Any]:
        return self.base_optimizer.state_dict()

    def _inner_load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.base_optimizer.load_state_dict(state_dict)
        self.param_groups = self.base_optimizer.param_groups  # re-link: torch rebuilt the groups
        self.state = self.base_optimizer.state

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero the gradients of all parameters (those of the base optimizer)."""
        self.base_optimizer.zero_grad(set_to_none=set_to_none)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_optimizer={self.base_optimizer!r})"

