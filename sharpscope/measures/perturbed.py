"""The loss at perturbed weights ``L(w + s ⊙ z)`` on a set of probe batches, with its cost counted.

``s`` is the perturbation's scale: ``1`` (plain), ``|w|`` (adaptive) or ``|w| + 1`` (Keskar's box).
Every evaluation swaps parameter values functionally (the model's own tensors are never written);
:func:`weights_restored` checks that, and restores any tensor that changed, also when a measure raises.
"""

from __future__ import annotations

import contextlib
import math
import statistics
from collections.abc import Iterable, Iterator, Sequence

import torch
from torch import Tensor, nn

from sharpscope.curvature.operators import batches as structure
from sharpscope.curvature.operators.objective import Batch, Objective
from sharpscope.errors import ConfigError, ObjectiveError


@contextlib.contextmanager
def weights_restored(model: nn.Module) -> Iterator[None]:
    """Snapshot every parameter and buffer; afterwards (also on raise) copy back, bit for bit, any that changed."""
    saved = {n: t.detach().clone() for n, t in (*model.named_parameters(), *model.named_buffers())}
    try:
        yield
    finally:
        with torch.no_grad():
            for n, t in (*model.named_parameters(), *model.named_buffers()):
                before = saved.get(n)
                if before is not None and not torch.equal(t, before):
                    t.copy_(before)


#: What a measure returns: ``(value, stderr, convergence, details)``.
MeasureOutput = tuple[float, float | None, dict[str, object] | None, dict[str, object]]


def mean_stderr(values: Sequence[float]) -> float:
    """The standard error of the mean of ``values``, ``s / √n``."""
    return statistics.stdev(values) / math.sqrt(len(values))


class Counter:
    """Model calls on one batch each: forward and backward passes."""

    def __init__(self) -> None:
        self.forwards = 0
        self.backwards = 0


class PerturbedLoss:
    """``z -> L_S(w + s ⊙ z)`` with ``L_S = Σ_{b∈S} (n_b/N_S) ℓ_b`` over the batches ``S``.

    Call inside ``objective.mode()``. ``value(z)`` costs one forward per batch; ``value_and_grad(z)``
    one forward and one backward per batch and returns ``∂/∂z = s ⊙ ∇L(w + s ⊙ z)``.
    """

    def __init__(self, objective: Objective, batches: Sequence[Batch] | None, scale: Tensor, counter: Counter) -> None:
        self.objective = objective
        if batches is None:  # the whole probe set, read as the objective reads it (streamed or in memory)
            self.batches: Iterable[Batch] = objective.batches
            self.weights = objective.weights()
        else:
            self.batches = list(batches)
            total = sum(b.size for b in batches)
            self.weights = [b.size / total for b in batches]
        self.w = objective.parameter_vector()
        self.scale = scale
        self.counter = counter

    @property
    def dim(self) -> int:
        """The number of parameters, the length of ``z``."""
        return self.w.numel()

    def _checked(self, value: float, z: Tensor | None) -> float:
        if not math.isfinite(value):
            if z is None:
                raise ObjectiveError(f"the loss is {value} at the current weights")
            raise ObjectiveError(f"the loss is {value} at a perturbed point: the perturbation is too large for "
                                 "this model (lower rho or epsilon)")
        return value

    @torch.no_grad()
    def value(self, z: Tensor | None = None) -> float:
        """``L_S(w + s ⊙ z)`` (``L_S(w)`` when ``z`` is None); a non-finite loss raises :class:`ObjectiveError`."""
        theta = self.w if z is None else self.w + self.scale * z
        params = self.objective.unflatten(theta)
        total = 0.0
        for batch, weight in zip(self.batches, self.weights):
            total += weight * float(self.objective.batch_loss(params, batch))
            self.counter.forwards += 1
        return self._checked(total, z)

    def value_and_grad(self, z: Tensor) -> tuple[float, Tensor]:
        """``L_S(w + s ⊙ z)`` and its gradient in ``z``, ``s ⊙ ∇L_S(w + s ⊙ z)``."""
        theta = self.w + self.scale * z
        total, grad = 0.0, torch.zeros_like(theta)
        for batch, weight in zip(self.batches, self.weights):
            leaves = {n: t.detach().requires_grad_(True) for n, t in self.objective.unflatten(theta).items()}

            def run(batch: Batch = batch, leaves: dict[str, Tensor] = leaves) -> tuple[float, Tensor]:
                with torch.enable_grad():
                    loss = self.objective.batch_loss(leaves, batch)
                    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
                flat = self.objective.flatten(torch.zeros_like(p) if g is None else g
                                              for g, p in zip(grads, leaves.values()))
                return float(loss.detach()), flat

            loss, g = self.objective.within(leaves, run)
            self.counter.forwards += 1
            self.counter.backwards += 1
            total += weight * loss
            grad += weight * g
        return self._checked(total, z), self.scale * grad


def perturbation_scale(objective: Objective, kind: str) -> Tensor:
    """``s``: ``"plain"`` ones, ``"adaptive"`` ``|w|``, ``"keskar"`` ``|w| + 1`` (elementwise)."""
    w = objective.parameter_vector()
    if kind == "plain":
        return torch.ones_like(w)
    if kind == "adaptive":
        return w.abs()
    if kind == "keskar":
        return w.abs() + 1
    raise ConfigError(f"scale must be 'plain', 'adaptive' or 'keskar', got {kind!r}")


def example_batches(objective: Objective, m: int | None) -> list[list[Batch] | None]:
    """The sets the measure is computed on: the whole probe set (``[None]`` when ``m`` is None), or
    consecutive batches of ``m`` examples cut from each probe batch (a probe batch's last ``n_b mod m``
    examples are left out, so that every set holds ``m``)."""
    if m is None:
        return [None]
    batches = list(objective.batches)
    sets: list[list[Batch] | None] = []
    for batch in batches:
        n = structure.rows(batch.data, 0)
        for start in range(0, n - m + 1, m):
            data = structure.slice_rows(batch.data, start, start + m)
            size = float(objective.count_fn(data)) if objective.count_fn is not None else float(m)
            sets.append([Batch(data, size)])
    if not sets:
        raise ConfigError(f"m={m} exceeds every probe batch ({[structure.rows(b.data, 0) for b in batches]} "
                          "examples): lower m or raise the batch size", argument="m")
    return sets


def draw(gen: torch.Generator, count: int, dim: int, kind: str, like: Tensor) -> Tensor:
    """``count`` rows of ``dim`` draws on the CPU (``"gaussian"`` N(0, 1), ``"uniform"`` U[−1, 1]), moved
    to ``like``'s device and dtype, so a seed gives the same draws on any device."""
    if kind == "gaussian":
        out = torch.randn(count, dim, generator=gen, dtype=torch.float64)
    else:
        out = 2 * torch.rand(count, dim, generator=gen, dtype=torch.float64) - 1
    return out.to(device=like.device, dtype=like.dtype)
