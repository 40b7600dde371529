"""The objective whose curvature is measured: model, loss, BN mode and parameters over a fixed probe set.

The objective is the mean loss over every example of the probe set,

    L(θ) = (1/N) Σ_b n_b · ℓ_b(θ),

where batch ``b`` holds ``n_b`` examples and ``ℓ_b`` is the loss of that batch, a *mean* over its
examples. So the same data split into batches of any sizes gives the same objective. An example is
a row (the leading dimension of the batch's tensors) unless ``count_fn`` says otherwise, e.g. the
tokens of a language-model batch, so that ``L`` is the mean over tokens. Under
``torch.distributed`` each rank holds a shard of the batches and ``N`` counts the examples of all
ranks (the batches and counts are a :class:`~sharpscope.curvature.operators.probe_set.ProbeSet`).
It must be the objective the optimizer descends, or the edge-of-stability thresholds are off
by constant factors; a sum-reduced loss is therefore refused unless declared (``reduction="sum"``).
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn
from torch.func import functional_call

from sharpscope.curvature.operators import batches as structure
from sharpscope.curvature.operators.distributed import sum_across_ranks, sum_scalar_across_ranks, world_size
from sharpscope.curvature.operators.loaded import loaded_setup
from sharpscope.curvature.operators.probe_set import Batch, CountFn, ProbeSet, StreamedBatches
from sharpscope.errors import ConfigError, DataError, ObjectiveError
from sharpscope.losses import correct_fraction
from sharpscope.validation import check_choice, check_int, check_type

BNMode = Literal["eval", "batch"]
Reduction = Literal["mean", "sum"]
WeightPrecision = Literal["upcast", "native"]
LossFn = Callable[[Any, Any], Tensor]  # (outputs, targets) of whatever structure the model produces
ForwardFn = Callable[[nn.Module, object], object]
OutputFn = Callable[[object], object]
ClosureFn = Callable[[nn.Module, object], Tensor]
ParamSelector = str | Sequence[str] | Callable[[str, nn.Parameter], bool] | None

_NORM_WITH_STATS = (nn.modules.batchnorm._BatchNorm,)
LOW_PRECISION = (torch.float16, torch.bfloat16)


class ReductionWarning(UserWarning):
    """The loss could not be verified to be a mean over the batch's examples."""


class DropoutWarning(UserWarning):
    """The model is in train mode with dropout; curvature is measured with dropout off."""


def default_output(out: object) -> object:
    """``out.logits`` or ``out["logits"]`` when the model returns a structure holding logits, else ``out``."""
    if isinstance(out, Tensor):
        return out
    if isinstance(out, Mapping) and "logits" in out:
        return out["logits"]
    logits = getattr(out, "logits", None)
    return logits if isinstance(logits, Tensor) else out


class _Apply(nn.Module):
    """``fn(model, batch)`` as a module, so ``functional_call`` can swap the model's parameters."""

    def __init__(self, model: nn.Module, fn: Callable[[nn.Module, object], object]) -> None:
        super().__init__()
        self.model = model
        self.fn = fn

    def forward(self, data: object) -> object:
        return self.fn(self.model, data)


class _Run(nn.Module):
    """Runs ``fn()`` as its forward, so ``functional_call`` can hold parameters swapped around any code."""

    def __init__(self, model: nn.Module, fn: Callable[[], Any]) -> None:
        super().__init__()
        self.model = model
        self.fn = fn

    def forward(self) -> Any:
        return self.fn()


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


def finite_batch_loss(value: float, index: int) -> float:
    """``value``, the loss on batch ``index`` of the probe set; :class:`ObjectiveError` when it is not finite."""
    if not math.isfinite(value):
        raise ObjectiveError(f"loss is {value} on batch {index} of the probe set")
    return value


class Objective:
    """Mean loss of ``model`` over a fixed probe set, as a function of the selected parameters.

    Args:
        model: the network. Its train/eval flags and buffers are left exactly as they were. A model
            as users load it (fused attention, activation checkpointing, a KV cache) is evaluated
            with the set-up of :mod:`sharpscope.curvature.operators.loaded`, recorded in :meth:`describe`.
        loss_fn: ``(output, target) -> loss of the batch``, e.g. ``nn.CrossEntropyLoss()``. ``output``
            is the model output after the ``output`` adapter; ``target`` is ``y`` for an ``(x, y)``
            pair and the whole batch for any other structure (so ``loss_fn(logits, batch)`` can read
            labels and masks from a mapping). ``None`` when ``closure`` is given; ``None`` without
            ``closure`` for a Hugging Face model takes its head's training loss
            (:func:`sharpscope.models.hf.head_loss`: next-token cross entropy over the predicted
            tokens of a causal LM, the labelled positions of a masked LM, the examples of a
            sequence classifier), with its token count and a forward that leaves ``labels`` out.
        data: an ``(x, y)`` tensor pair, a tensor or a mapping of tensors (one batch, split by
            ``batch_size``), or an iterable of batches of any sizes, each a tensor, a tuple/list or
            a mapping of tensors (see :mod:`sharpscope.curvature.operators.batches`). Tensors are moved to the
            parameters' device (floating ones cast to the compute dtype).
        bn: ``"eval"`` evaluates BatchNorm with its running statistics; ``"batch"`` uses the
            statistics of each fixed batch (train-mode normalisation, the batch acting as the ghost
            batch) without touching the running buffers.
        params: which parameters the Hessian is taken over (see :func:`select_parameters`).
        batch_size: split one tensor, pair or mapping into batches of this size (memory; the
            objective is the same for any split).
        validate: evaluate the loss on every batch now, so bad data fails here with a clear error,
            and check the loss's reduction (see ``reduction``).
        forward: ``(model, batch) -> raw output``; default ``model(x)`` for an ``(x, y)`` pair or a
            tensor, ``model(**batch)`` for a mapping, ``model(batch[0])`` for any other tuple or list.
        output: ``raw output -> output`` given to ``loss_fn``; default :func:`default_output` (takes
            ``.logits``/``["logits"]`` when present). ``output=lambda o: o`` passes the raw output.
        closure: ``(model, batch) -> loss of the batch``, instead of ``loss_fn``/``forward``/``output``
            (e.g. ``lambda m, b: m(**b).loss`` for a Hugging Face model given labels).
        count_fn: ``batch -> n_b``, the examples a batch holds; default its leading dimension. With
            tokens (``lambda b: b["attention_mask"].sum()``) and a loss that is the mean over the
            batch's tokens, ``L`` is the mean over all tokens, for any split into batches.
        reduction: ``"mean"`` (``ℓ_b`` is the mean over the batch's examples) or ``"sum"`` (its sum;
            the objective divides by ``n_b``). With ``validate`` the loss of a batch is compared with
            its halves' losses: a mean equals their count-weighted mean, a sum their sum. A loss that
            contradicts the declared reduction is refused; one that fits neither warns
            (:class:`ReductionWarning`). The verdict is in :meth:`describe`.
        weight_precision: for float16/bfloat16 parameters, ``"upcast"`` (default) computes in float32
            (the model's other parameters and buffers are upcast too, in copies); ``"native"``
            computes in the parameters' dtype. float32/float64 parameters are used as they are.
            :meth:`describe` records it and whether it upcast (``upcast``). The arithmetic of the
            products is the operator's ``precision``, a separate choice.
        dropout: dropout is off during every evaluation (modules in eval mode). A model in train
            mode with dropout layers warns (:class:`DropoutWarning`) unless ``dropout="off"`` says so.
        stream: ``True`` reads the data afresh for each product, one batch on the device at a time
            (tensors stay where they are, e.g. in host memory, split by ``batch_size``; a source must
            be re-iterable and give the same batches each pass); ``False`` keeps every batch on the
            device. Default: stream a re-iterable source that is not a list or tuple (a
            ``DataLoader``, a dataset of batches), keep anything else.
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn | None, data: object, *, bn: BNMode = "eval",
                 params: ParamSelector = None, batch_size: int | None = None, validate: bool = True,
                 forward: ForwardFn | None = None, output: OutputFn | None = None, closure: ClosureFn | None = None,
                 count_fn: CountFn | None = None, reduction: Reduction = "mean", weight_precision: WeightPrecision = "upcast",
                 dropout: Literal["off"] | None = None, stream: bool | None = None) -> None:
        check_type("model", model, nn.Module, "a torch.nn.Module")
        check_int("batch_size", batch_size, low=1, optional=True)
        for name, fn in (("loss_fn", loss_fn), ("forward", forward), ("output", output), ("closure", closure),
                         ("count_fn", count_fn)):
            if fn is not None and not callable(fn):
                raise ConfigError(f"{name} must be callable, got {type(fn).__name__}", argument=name)
        check_choice("bn", bn, get_args(BNMode))
        check_choice("reduction", reduction, get_args(Reduction))
        check_choice("weight_precision", weight_precision, get_args(WeightPrecision))
        if dropout not in (None, "off"):
            raise ConfigError(f"dropout must be 'off' (dropout is never sampled during products), got {dropout!r}")
        if loss_fn is not None and closure is not None:
            raise ConfigError("give exactly one of loss_fn (output, target) -> loss and closure (model, batch) -> loss")
        self.head: str | None = None
        self._needs: tuple[str, ...] = ()
        if loss_fn is None and closure is None:
            from sharpscope.models.hf import head_loss

            head = head_loss(model)  # ConfigError for a model without a known head
            loss_fn, self.head, self._needs = head.loss_fn, head.name, head.needs
            forward = forward if forward is not None else head.forward
            count_fn = count_fn if count_fn is not None else head.count_fn
        if closure is not None and (forward is not None or output is not None):
            raise ConfigError("closure computes the loss from the model itself; forward= and output= do not apply")
        self.model = model
        self.loss_fn = loss_fn
        self.bn: BNMode = bn
        self.output_fn = output if output is not None else default_output
        self.closure = closure
        self.count_fn = count_fn
        self.reduction: Reduction = reduction
        self.weight_precision: WeightPrecision = weight_precision
        self.params = select_parameters(model, params)
        first = next(iter(self.params.values()))
        self.device, self.param_dtype = first.device, first.dtype
        upcast = weight_precision == "upcast" and self.param_dtype in LOW_PRECISION
        self.dtype = torch.float32 if upcast else self.param_dtype
        self._upcast = upcast
        self._state: dict[str, Tensor] = {}  # float32 copies of the rest of the model, inside mode()
        apply_fn = closure or forward
        self._apply = _Apply(model, apply_fn) if apply_fn is not None else None
        self.names = list(self.params)
        self.shapes = [p.shape for p in self.params.values()]
        self.numels = [p.numel() for p in self.params.values()]
        self.dim = sum(self.numels)
        self.has_batchnorm = any(isinstance(m, _NORM_WITH_STATS) for m in model.modules())
        self.dropout = self._dropout_policy(dropout)
        self.loaded = loaded_setup(model)
        self.fwd_rev_workaround: str | None = None
        self.probe_set = ProbeSet(data, device=self.device, dtype=self.dtype, batch_size=batch_size,
                                  count_fn=count_fn, stream=stream, needs=self._needs,
                                  needed_by=(self.head or "").split(":")[0])
        if self.loaded.checkpointed:
            self._check_checkpointed_layers()
        self.reduction_check = "not checked (validate=False)"
        if validate:
            self.loss()
            self.reduction_check = self._check_reduction()

    # ------------------------------------------------------------------------------ set-up
    def _upcast_state(self) -> dict[str, Tensor]:
        """float32 copies of every low-precision parameter and buffer that is not selected."""
        state = {n: t for n, t in (*self.model.named_parameters(), *self.model.named_buffers())
                 if n not in self.params and t.dtype in LOW_PRECISION}
        return {n: t.detach().float() for n, t in state.items()}

    def _check_checkpointed_layers(self) -> None:
        """Checkpointed layers stay in training mode during products: evaluate the first batch under two
        seeds, and turn checkpointing off for products if the losses differ (a layer that samples
        dropout itself when in training mode). Costs two forward passes of one batch."""
        params, batch = self.param_values(), self.batches[0]
        devices = [self.device] if self.device.type == "cuda" else []
        losses = []
        for seed in (0, 1):
            with torch.random.fork_rng(devices=devices), torch.no_grad(), self.mode():
                torch.manual_seed(seed)
                losses.append(float(self.batch_loss(params, batch)))
        if losses[0] != losses[1]:
            self.loaded.stop_checkpointing(f"the loss of batch 0 differs between two seeds ({losses[0]!r}, "
                                           f"{losses[1]!r}) with the checkpointed layers in training mode: they "
                                           "sample dropout themselves")

    def _dropout_policy(self, dropout: Literal["off"] | None) -> str:
        if dropout is None and self.model.training:
            layers = [m for m in self.model.modules() if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0]
            if layers:
                warnings.warn(f"the model is in train mode with {len(layers)} dropout layers; curvature is measured "
                              "with dropout off (pass dropout='off' to say so)", DropoutWarning, stacklevel=3)
        return "off"

    def strict_copy(self) -> Objective:
        """The objective computed in float32: the same model, loss and probe set, the parameters and
        floating batch tensors upcast (a shallow copy; the model is shared, nothing is re-validated).
        The reference of products taken natively in float16/bfloat16."""
        twin = copy.copy(self)
        twin.dtype, twin._upcast, twin.weight_precision, twin._state = torch.float32, True, "upcast", {}
        twin.fwd_rev_workaround = None
        twin.probe_set = self.probe_set.recast(torch.float32)
        return twin

    # ----------------------------------------------------------------------------------- the probe set
    @property
    def batches(self) -> list[Batch] | StreamedBatches:
        """The probe set's batches (:class:`~sharpscope.curvature.operators.probe_set.ProbeSet`)."""
        return self.probe_set.batches

    @property
    def counts(self) -> list[float]:
        """``n_b`` of each batch."""
        return self.probe_set.counts

    @property
    def num_examples(self) -> float:
        """``N``, the examples of the probe set over all ranks."""
        return self.probe_set.num_examples

    @property
    def local_examples(self) -> float:
        """The examples this rank holds."""
        return self.probe_set.local_examples

    @property
    def streamed(self) -> bool:
        """Whether the probe set is read afresh at every pass."""
        return self.probe_set.streamed

    def weights(self) -> list[float]:
        """``n_b / N`` for each batch."""
        return self.probe_set.weights()

    # ----------------------------------------------------------------------------------- modes
    @contextlib.contextmanager
    def mode(self, bn: BNMode | None = None) -> Iterator[None]:
        """Put the model in this objective's evaluation mode; restore every flag afterwards.

        All modules go to eval (no dropout). With ``bn="batch"`` BatchNorm layers normalise with
        the current batch's statistics and do not update their running buffers. ``bn`` overrides
        the objective's mode for this block. When upcasting, the model's unselected low-precision
        parameters and buffers are copied to float32 here, at their current values.
        """
        bn = bn or self.bn
        saved = [(m, m.training, getattr(m, "track_running_stats", None)) for m in self.model.modules()]
        saved_state = self._state
        try:
            if self._upcast:
                self._state = self._upcast_state()
            self.model.eval()
            if bn == "batch":
                for m in self.model.modules():
                    if isinstance(m, _NORM_WITH_STATS):
                        m.train()
                        m.track_running_stats = False
            with self.loaded.context():
                yield
        finally:
            self._state = saved_state
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

    def param_values(self) -> dict[str, Tensor]:
        """The selected parameters, detached, in the compute dtype (a float32 copy when upcasting)."""
        return {n: p.detach().to(self.dtype) for n, p in self.params.items()}

    def parameter_vector(self) -> Tensor:
        """The current values of the selected parameters as one flat vector (a copy)."""
        return self.flatten(self.param_values().values()).clone()

    # ----------------------------------------------------------------------------- evaluation
    def _call(self, params: dict[str, Tensor], batch: Batch) -> object:
        """The forward adapter (or the closure) at the given parameter values; the default forward
        calls the model itself, so its parameters are swapped without a wrapper."""
        state = {**self._state, **params} if self._state else params
        if self._apply is not None:
            return functional_call(self._apply, {f"model.{n}": t for n, t in state.items()}, (batch.data,),
                                   strict=False)
        if batch.pair or isinstance(batch.data, Tensor):
            return functional_call(self.model, state, (batch.x,), strict=False)
        if isinstance(batch.data, Mapping):
            return functional_call(self.model, state, (), dict(batch.data), strict=False)
        return functional_call(self.model, state, (batch.data[0],), strict=False)  # type: ignore[index]

    def module_loss(self, batch: Batch) -> Tensor:
        """``ℓ_b`` computed by calling the model as it is, its parameters not swapped: for a wrapper that
        manages its own parameters (a model sharded with ``fully_shard``, whose forward gathers them).
        Call inside :meth:`mode`; takes no upcast copies, so it is for parameters used as they are."""
        return self.module_loss_of(self.module_output(batch), batch)

    def module_loss_of(self, out: object, batch: Batch) -> Tensor:
        """``ℓ_b`` from :meth:`module_output`'s value ``out`` on ``batch``."""
        if self.closure is not None:
            return self._scaled(self._checked_scalar(out), batch.size)
        return self.output_loss(out, batch)

    def module_output(self, batch: Batch) -> object:
        """The model's output on ``batch`` (after the output adapter), calling the model as it is, as
        :meth:`module_loss` does; for a ``closure`` objective, the closure's value."""
        if self._apply is not None:
            out = self._apply(batch.data)
        elif batch.pair or isinstance(batch.data, Tensor):
            out = self.model(batch.x)
        elif isinstance(batch.data, Mapping):
            out = self.model(**batch.data)
        else:
            out = self.model(batch.data[0])  # type: ignore[index]
        return out if self.closure is not None else self.output_fn(out)

    def within(self, params: dict[str, Tensor], fn: Callable[[], Any]) -> Any:
        """``fn()`` with the model's selected parameters replaced by ``params`` for its whole duration,
        backward passes included. An activation-checkpointed layer recomputes its forward during the
        backward pass, after :meth:`batch_loss`'s own parameter swap has ended; gradients taken inside
        this block see ``params`` in that recomputation too (outside it, the model's own values)."""
        state = {**self._state, **params} if self._state else params
        return functional_call(_Run(self.model, fn), {f"model.{n}": t for n, t in state.items()}, (), strict=False)

    def output_and_loss(self, params: dict[str, Tensor],
                        batch: Batch) -> tuple[object, Callable[[object], Tensor]]:
        """For one batch: the model output after the output adapter, and ``output -> ℓ_b`` (the batch's
        mean loss, checked and rescaled as the objective is). Call inside :meth:`mode`. Operators built
        on the output (Gauss-Newton, Fisher) use this; a ``closure`` objective has no separate output."""
        if self.closure is not None:
            raise ObjectiveError("this objective's loss is a closure on the model; it has no separate model "
                                 "output (give loss_fn with forward=/output= instead)")
        out = self.output_fn(self._call(params, batch))
        return out, lambda o: self.output_loss(o, batch)

    def output_loss(self, out: object, batch: Batch) -> Tensor:
        """``ℓ_b`` as a function of the model output ``out`` of ``batch`` (checked and rescaled as the
        objective is); ``batch`` may be a slice of a probe batch."""
        return self._checked_loss(out, batch.y, batch.size)

    def batch_loss(self, params: dict[str, Tensor], batch: Batch) -> Tensor:
        """``ℓ_b`` at the given parameter values (others and buffers as in the model); call inside :meth:`mode`."""
        if self.closure is not None:
            return self._scaled(self._checked_scalar(self._call(params, batch)), batch.size)
        out, loss_of = self.output_and_loss(params, batch)
        return loss_of(out)

    def _scaled(self, loss: Tensor, count: float) -> Tensor:
        return loss / count if self.reduction == "sum" else loss

    @staticmethod
    def _checked_scalar(loss: object) -> Tensor:
        if not isinstance(loss, Tensor) or loss.ndim != 0:
            raise ObjectiveError("the loss must be a scalar tensor (the mean loss over the batch)")
        return loss

    def _checked_loss(self, out: object, y: object, count: float | None = None) -> Tensor:
        assert self.loss_fn is not None
        if isinstance(out, Tensor) and isinstance(y, Tensor):
            if out.ndim == 0:
                raise ObjectiveError(f"model output is a scalar for {y.shape[0]} targets")
            if out.shape[0] != y.shape[0]:
                raise ObjectiveError(f"model outputs {out.shape[0]} rows for {y.shape[0]} targets")
            if y.is_floating_point() and out.shape != y.shape:
                raise ObjectiveError(f"output shape {tuple(out.shape)} does not match target shape {tuple(y.shape)}")
        try:
            loss = self.loss_fn(out, y)
        except (RuntimeError, ValueError, IndexError, TypeError, KeyError, AttributeError) as err:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            target = f"{tuple(y.shape)} ({y.dtype})" if isinstance(y, Tensor) else type(y).__name__
            raise ObjectiveError(f"loss_fn failed on outputs {got} and targets {target}: "
                                 f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''} "
                                 "(outputs are after the output adapter, which takes .logits when present; "
                                 "output=lambda o: o passes the raw model output)") from None
        if count is None:
            count = structure.rows(y, 0) if isinstance(y, Tensor) else 1.0
        return self._scaled(self._checked_scalar(loss), count)

    def loss(self) -> float:
        """The objective's value; raises :class:`ObjectiveError` if any batch's loss is not finite."""
        total = 0.0
        params = self.param_values()
        with torch.no_grad(), self.mode():
            for i, (batch, w) in enumerate(zip(self.batches, self.weights())):
                total += w * finite_batch_loss(float(self.batch_loss(params, batch)), i)
        return sum_scalar_across_ranks(total, device=self.device)

    def evaluate_batch(self, thetas: Tensor, batch: Batch, *, vectorize: bool = False) -> tuple[Tensor, Tensor | None]:
        """``ℓ_b`` at each row of ``thetas`` ``(c, dim)`` on one batch, shape ``(c,)``, and the stacked model
        outputs ``(c, n_b, ...)`` (None for a ``closure`` objective, which has no separate output). With
        ``vectorize`` the rows go through :func:`torch.vmap` together, else one at a time. Call inside
        :meth:`mode` (and ``torch.no_grad()``)."""
        if self.closure is not None:
            return torch.stack([self.batch_loss(self.unflatten(flat), batch) for flat in thetas]), None

        def point(flat: Tensor) -> tuple[Tensor, Tensor]:
            out, loss_of = self.output_and_loss(self.unflatten(flat), batch)
            return loss_of(out), out  # type: ignore[return-value]

        if vectorize:
            return torch.vmap(point)(thetas)
        losses, outs = zip(*(point(flat) for flat in thetas))
        return torch.stack(losses), torch.stack(outs)

    def evaluate(self, thetas: Tensor | None = None, *, vectorize: bool = False, accuracy: bool = True,
                 across_ranks: bool = True) -> tuple[Tensor, Tensor | None]:
        """Mean loss and accuracy over the probe set, weighted by example counts, at each row of ``thetas``.

        ``L(θ) = Σ_b (n_b/N) ℓ_b(θ)`` and ``acc(θ) = Σ_b (n_b/N) acc_b(θ)`` (``acc_b`` the fraction of rows
        whose arg-max output is the label, or the target's arg-max), as float64 tensors of shape ``(c,)`` for
        ``thetas`` of shape ``(c, dim)``; of shape ``()`` at the current parameters when ``thetas`` is None.
        The accuracy is None when not asked for or when the outputs are not class scores (``(n_b, C)`` with
        ``C ≥ 2``, after the output adapter). Non-finite losses are returned as they are (:meth:`loss`
        raises instead). ``across_ranks`` sums the ranks' shares under a process group (every rank must
        call). Runs in :meth:`mode`, without gradients; ``vectorize`` as in :meth:`evaluate_batch`.
        """
        points = self.parameter_vector()[None] if thetas is None else thetas
        loss = torch.zeros(points.shape[0], dtype=torch.float64, device=points.device)
        acc: Tensor | None = torch.zeros_like(loss) if accuracy else None
        with torch.no_grad(), self.mode():
            for batch, w in zip(self.batches, self.weights()):
                losses, out = self.evaluate_batch(points, batch, vectorize=vectorize)
                loss += w * losses.double()
                if acc is not None and not (isinstance(out, Tensor) and out.ndim == 3 and out.shape[2] > 1):
                    acc = None  # not class scores
                if acc is not None:
                    acc += w * correct_fraction(out, batch.y)  # type: ignore[arg-type]
        if across_ranks:
            loss = sum_across_ranks(loss)
            acc = None if acc is None else sum_across_ranks(acc)
        if thetas is None:
            return loss[0], None if acc is None else acc[0]
        return loss, acc

    def correct_examples(self) -> Tensor | None:
        """Whether the model gets each of this process's probe examples right at the current parameters
        (arg-max output equals the label, or the target's arg-max), as a bool vector in batch order; None
        when the outputs are not class scores ``(n_b, C)``, ``C ≥ 2`` (or for a ``closure`` objective)."""
        if self.closure is not None:
            return None
        flags = []
        with torch.no_grad(), self.mode():
            for batch in self.batches:
                out = self.evaluate_batch(self.parameter_vector()[None], batch)[1]
                if not (isinstance(out, Tensor) and out.ndim == 3 and out.shape[2] > 1) or batch.y is None:
                    return None
                y = batch.y.argmax(dim=-1) if batch.y.is_floating_point() else batch.y
                flags.append((out[0].argmax(dim=-1) == y).cpu())
        return torch.cat(flags)

    def gradient(self) -> Tensor:
        """``∇L(θ)`` as a flat vector."""
        params = self.param_values()
        total = torch.zeros(self.dim, dtype=self.dtype, device=self.device)
        with self.mode():
            for batch, w in zip(self.batches, self.weights()):
                total += w * self.batch_gradient(params, batch)
        return sum_across_ranks(total)

    def batch_gradient(self, params: dict[str, Tensor], batch: Batch) -> Tensor:
        """``∇ℓ_b`` at ``params`` as a flat vector, by one backward pass inside :meth:`within` (so it is
        right through activation checkpointing, which ``torch.func`` transforms do not support). Call
        inside :meth:`mode`."""
        leaves = {n: t.detach().requires_grad_(True) for n, t in params.items()}

        def run() -> Tensor:
            with torch.enable_grad():
                loss = self.batch_loss(leaves, batch)
                grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
            return self.flatten(torch.zeros_like(p) if g is None else g for g, p in zip(grads, leaves.values()))

        return self.within(leaves, run)

    # ------------------------------------------------------------------------- reduction check
    def _check_reduction(self) -> str:
        """Compare ``ℓ`` of a batch with its halves: a mean equals ``(n₁ℓ₁ + n₂ℓ₂)/(n₁+n₂)``, a sum ``ℓ₁ + ℓ₂``.

        Runs with BatchNorm on running statistics (``bn="batch"`` couples the examples of a batch).
        Agreement means within a relative ``max(√eps, 1e-4)`` (losses often compute in float32 inside).
        Costs the forward passes of one batch and of its two halves.
        Returns the verdict; raises :class:`ObjectiveError` when it contradicts ``reduction``.
        """
        batch = next((b for b in self.batches if self._rows_or_zero(b) >= 2), None)
        if batch is None:
            return "not checked (no batch holds two examples)"
        n = structure.rows(batch.data, 0)
        halves = [self.probe_set.make(0, structure.slice_rows(batch.data, a, b)) for a, b in ((0, n // 2), (n // 2, n))]
        params = self.param_values()
        saved, self.reduction = self.reduction, "mean"  # raw values of the loss as given
        try:
            with torch.no_grad(), self.mode(bn="eval"):
                whole, *parts = (float(self.batch_loss(params, b)) for b in (batch, *halves))
        except (RuntimeError, ValueError, IndexError, TypeError) as err:  # e.g. a model fixed to one batch size
            reason = f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:160]}"
            warnings.warn(f"cannot check the loss's reduction: half a batch fails ({reason}); using it as "
                          f"reduction={saved!r}", ReductionWarning, stacklevel=3)
            return f"not checked (half a batch fails: {reason})"
        finally:
            self.reduction = saved
        n1, n2 = halves[0].size, halves[1].size
        if n1 + n2 == 0:
            return "not checked (the halves hold no examples)"
        mean = (n1 * parts[0] + n2 * parts[1]) / (n1 + n2)
        total = parts[0] + parts[1]
        tol = max(math.sqrt(torch.finfo(self.dtype).eps), 1e-4) * max(abs(mean), abs(total), 1e-30)
        fits_mean, fits_sum = abs(whole - mean) <= tol, abs(whole - total) <= tol
        verdict = "mean" if fits_mean and not fits_sum else "sum" if fits_sum and not fits_mean else "undetermined"
        if verdict == "undetermined":
            warnings.warn(f"cannot tell whether the loss is a mean or a sum over the batch (loss {whole:.6g}, halves "
                          f"{parts[0]:.6g} and {parts[1]:.6g} with {n1} and {n2} examples); using it as "
                          f"reduction={self.reduction!r}", ReductionWarning, stacklevel=3)
            return "undetermined"
        if verdict != self.reduction:
            fix = ("pass a mean-reduced loss, or reduction='sum' to divide by each batch's example count"
                   if verdict == "sum" else "it is a mean; drop reduction='sum'")
            raise ObjectiveError(f"the loss is a {verdict} over the batch, not a {self.reduction} (loss of a batch "
                                 f"{whole:.6g}, its halves {parts[0]:.6g} and {parts[1]:.6g}): {fix}")
        return verdict

    def _rows_or_zero(self, batch: Batch) -> int:
        try:
            return structure.rows(batch.data, 0)
        except DataError:
            return 0

    def describe(self) -> dict[str, object]:
        """How the objective is set up, for the record of every result."""
        record: dict[str, object] = {
            "probe_examples": self.num_examples, "num_batches": len(self.counts), "world_size": world_size(),
            "bn": self.bn, "has_batchnorm": self.has_batchnorm, "dim": self.dim, "num_params_tensors": len(self.names),
            "dtype": str(self.dtype).removeprefix("torch."), "device": str(self.device)}
        record.update({
            "param_dtype": str(self.param_dtype).removeprefix("torch."), "weight_precision": self.weight_precision,
            "upcast": self.dtype != self.param_dtype, "dropout": self.dropout,
            "data": "streamed" if self.streamed else "in memory", "data_reason": self.probe_set.stream_reason,
            "loss_closure": self.closure is not None,
            "count": "count_fn" if self.count_fn is not None else "leading dimension",
            "reduction": self.reduction, "reduction_check": self.reduction_check,
            "fwd_rev_workaround": self.fwd_rev_workaround, "head_loss": self.head, **self.loaded.describe()})
        return record
