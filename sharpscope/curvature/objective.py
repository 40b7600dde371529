"""The objective whose curvature is measured: model, loss, a fixed probe set, BN mode, parameters.

The objective is the mean loss over every example of the probe set,

    L(θ) = (1/N) Σ_b n_b · ℓ_b(θ),

where batch ``b`` holds ``n_b`` examples and ``ℓ_b`` is ``loss_fn`` (a *mean* over its batch). So the
same data split into batches of any sizes gives the same objective. Under ``torch.distributed``
each rank holds a shard of the batches and ``N`` counts the examples of all ranks. It must be the objective the
optimizer descends, or the edge-of-stability thresholds are off by constant factors.
"""

from __future__ import annotations

import contextlib
import fnmatch
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call

from sharpscope.curvature.distributed import sum_across_ranks, sum_scalar_across_ranks, world_size
from sharpscope.errors import ConfigError, DataError, ObjectiveError
from sharpscope.validation import check_cast

BNMode = Literal["eval", "batch"]
LossFn = Callable[[Tensor, Tensor], Tensor]
ParamSelector = str | Sequence[str] | Callable[[str, nn.Parameter], bool] | None

_NORM_WITH_STATS = (nn.modules.batchnorm._BatchNorm,)


@dataclass(frozen=True)
class Batch:
    """One fixed batch of the probe set, already on the objective's device."""

    x: Tensor
    y: Tensor

    @property
    def size(self) -> int:
        return int(self.x.shape[0])


def _as_batches(data: object, batch_size: int | None) -> list[tuple[Tensor, Tensor]]:
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        x, y = data
        if x.shape[0] != y.shape[0]:
            raise DataError(f"data has {x.shape[0]} inputs but {y.shape[0]} targets")
        if batch_size is not None:
            if batch_size < 1:
                raise ConfigError(f"batch_size must be positive, got {batch_size}")
            return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)]
        return [(x, y)]
    if batch_size is not None:
        raise ConfigError("batch_size applies to an (x, y) tensor pair; an iterable of batches is used as given")
    if not isinstance(data, Iterable):
        raise DataError(f"data must be an (x, y) tensor pair or an iterable of (x, y) batches, got {type(data).__name__}")
    batches = []
    for i, item in enumerate(data):
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(t, Tensor) for t in item)):
            raise DataError(f"batch {i} is not an (x, y) pair of tensors")
        if item[0].shape[0] != item[1].shape[0]:
            raise DataError(f"batch {i} has {item[0].shape[0]} inputs but {item[1].shape[0]} targets")
        batches.append((item[0], item[1]))
    return batches


def select_parameters(model: nn.Module, params: ParamSelector) -> dict[str, nn.Parameter]:
    """Named parameters the Hessian is taken over.

    ``None`` selects every trainable parameter; a glob pattern or a sequence of patterns/names
    (``"layer1.*"``, ``["fc.weight"]``) selects by name among trainable parameters; a callable
    ``(name, param) -> bool`` selects freely. Frozen parameters are never selected.
    """
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if params is None:
        chosen = trainable
    elif callable(params):
        chosen = {n: p for n, p in trainable.items() if params(n, p)}
    else:
        patterns = [params] if isinstance(params, str) else list(params)
        chosen = {n: p for n, p in trainable.items() if any(fnmatch.fnmatchcase(n, pat) for pat in patterns)}
        unmatched = [pat for pat in patterns if not any(fnmatch.fnmatchcase(n, pat) for n in trainable)]
        if unmatched:
            raise ConfigError(f"no trainable parameter matches {unmatched}; trainable names: {list(trainable)[:12]}")
    if not chosen:
        raise ConfigError("no parameters selected: the model has no trainable parameters matching the selection")
    devices = {p.device for p in chosen.values()}
    dtypes = {p.dtype for p in chosen.values()}
    if len(devices) > 1 or len(dtypes) > 1:
        raise ConfigError(f"selected parameters must share one device and dtype, found {devices} and {dtypes}")
    if not next(iter(dtypes)).is_floating_point:
        raise ConfigError("selected parameters must be floating point")
    return chosen


class Objective:
    """Mean loss of ``model`` over a fixed probe set, as a function of the selected parameters.

    Args:
        model: the network. Its train/eval flags and buffers are left exactly as they were.
        loss_fn: ``(outputs, targets) -> mean loss over the batch``, e.g. ``nn.CrossEntropyLoss()``.
        data: an ``(x, y)`` tensor pair, or an iterable of ``(x, y)`` batches of any sizes. It is
            read once, moved to the parameters' device (floating inputs cast to their dtype) and kept.
        bn: ``"eval"`` evaluates BatchNorm with its running statistics; ``"batch"`` uses the
            statistics of each fixed batch (train-mode normalisation, the batch acting as the ghost
            batch) without touching the running buffers. Dropout is always off.
        params: which parameters the Hessian is taken over (see :func:`select_parameters`).
        batch_size: split an ``(x, y)`` pair into batches of this size (memory; the objective is
            the same for any split).
        validate: evaluate the loss on every batch now, so bad data fails here with a clear error.
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, data: object, *, bn: BNMode = "eval",
                 params: ParamSelector = None, batch_size: int | None = None, validate: bool = True) -> None:
        if bn not in ("eval", "batch"):
            raise ConfigError(f"bn must be 'eval' or 'batch', got {bn!r}")
        self.model = model
        self.loss_fn = loss_fn
        self.bn: BNMode = bn
        self.params = select_parameters(model, params)
        first = next(iter(self.params.values()))
        self.device, self.dtype = first.device, first.dtype
        self.names = list(self.params)
        self.shapes = [p.shape for p in self.params.values()]
        self.numels = [p.numel() for p in self.params.values()]
        self.dim = sum(self.numels)
        self.batches = [self._place(x, y) for x, y in _as_batches(data, batch_size)]
        self.batches = [b for b in self.batches if b.size > 0]
        if not self.batches:
            raise DataError("the probe set is empty: no examples to evaluate the loss on")
        self.local_examples = sum(b.size for b in self.batches)
        self.num_examples = int(sum_scalar_across_ranks(self.local_examples, device=self.device))
        self.has_batchnorm = any(isinstance(m, _NORM_WITH_STATS) for m in model.modules())
        if validate:
            self.loss()

    def _place(self, x: Tensor, y: Tensor) -> Batch:
        cx = check_cast("the inputs", x, x.to(self.device, dtype=self.dtype if x.is_floating_point() else x.dtype))
        cy = check_cast("the targets", y, y.to(self.device, dtype=self.dtype if y.is_floating_point() else y.dtype))
        return Batch(cx, cy)

    # ----------------------------------------------------------------------------------- modes
    @contextlib.contextmanager
    def mode(self) -> Iterator[None]:
        """Put the model in this objective's evaluation mode; restore every flag afterwards.

        All modules go to eval (no dropout). With ``bn="batch"`` BatchNorm layers normalise with
        the current batch's statistics and do not update their running buffers.
        """
        saved = [(m, m.training, getattr(m, "track_running_stats", None)) for m in self.model.modules()]
        try:
            self.model.eval()
            if self.bn == "batch":
                for m in self.model.modules():
                    if isinstance(m, _NORM_WITH_STATS):
                        m.train()
                        m.track_running_stats = False
            yield
        finally:
            for m, training, track in saved:
                m.training = training
                if track is not None:
                    m.track_running_stats = track

    # ------------------------------------------------------------------------------ flat views
    def flatten(self, tensors: Iterable[Tensor]) -> Tensor:
        """Concatenate per-parameter tensors into one flat vector (parameter order)."""
        return torch.cat([t.reshape(-1) for t in tensors])

    def unflatten(self, v: Tensor) -> dict[str, Tensor]:
        """Split a flat vector ``(dim,)`` (or ``(..., dim)``) into per-parameter views."""
        lead = v.shape[:-1]
        parts = torch.split(v, self.numels, dim=-1)
        return {n: t.reshape(*lead, *s) for n, t, s in zip(self.names, parts, self.shapes)}

    def parameter_vector(self) -> Tensor:
        """The current values of the selected parameters as one flat vector (a copy)."""
        return self.flatten(p.detach() for p in self.params.values()).clone()

    # ----------------------------------------------------------------------------- evaluation
    def batch_loss(self, params: dict[str, Tensor], batch: Batch) -> Tensor:
        """``ℓ_b`` at the given parameter values (others and buffers as in the model); call inside :meth:`mode`."""
        out = functional_call(self.model, params, (batch.x,), strict=False)
        return self._checked_loss(out, batch.y)

    def _checked_loss(self, out: Tensor, y: Tensor) -> Tensor:
        if out.shape[0] != y.shape[0]:
            raise ObjectiveError(f"model outputs {out.shape[0]} rows for {y.shape[0]} targets")
        if y.is_floating_point() and out.shape != y.shape:
            raise ObjectiveError(f"output shape {tuple(out.shape)} does not match target shape {tuple(y.shape)}")
        try:
            loss = self.loss_fn(out, y)
        except (RuntimeError, ValueError, IndexError) as err:
            raise ObjectiveError(f"loss_fn failed on outputs {tuple(out.shape)} and targets "
                                 f"{tuple(y.shape)} ({y.dtype}): {str(err).splitlines()[0]}") from None
        if not isinstance(loss, Tensor) or loss.ndim != 0:
            raise ObjectiveError("loss_fn must return a scalar tensor (the mean loss over the batch)")
        return loss

    def weights(self) -> list[float]:
        """``n_b / N`` for each batch."""
        return [b.size / self.num_examples for b in self.batches]

    def loss(self) -> float:
        """The objective's value; raises :class:`ObjectiveError` if any batch's loss is not finite."""
        total = 0.0
        params = {n: p.detach() for n, p in self.params.items()}
        with torch.no_grad(), self.mode():
            for i, (batch, w) in enumerate(zip(self.batches, self.weights())):
                value = float(self.batch_loss(params, batch))
                if not math.isfinite(value):
                    raise ObjectiveError(f"loss is {value} on batch {i} of the probe set")
                total += w * value
        return sum_scalar_across_ranks(total, device=self.device)

    def gradient(self) -> Tensor:
        """``∇L(θ)`` as a flat vector."""
        grad_fn = torch.func.grad(self.batch_loss)
        params = {n: p.detach() for n, p in self.params.items()}
        total = torch.zeros(self.dim, dtype=self.dtype, device=self.device)
        with self.mode():
            for batch, w in zip(self.batches, self.weights()):
                total += w * self.flatten(grad_fn(params, batch).values())
        return sum_across_ranks(total)

    def describe(self) -> dict[str, object]:
        """How the objective is set up, for the record of every result."""
        return {"probe_examples": self.num_examples, "num_batches": len(self.batches), "world_size": world_size(),
                "bn": self.bn,
                "has_batchnorm": self.has_batchnorm, "dim": self.dim, "num_params_tensors": len(self.names),
                "dtype": str(self.dtype).removeprefix("torch."), "device": str(self.device)}
