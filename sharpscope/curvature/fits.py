"""The check that a data set fits a model and its loss, made before any measurement or file."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from sharpscope.curvature.operators.objective import Objective
from sharpscope.errors import ConfigError, SharpscopeError
from sharpscope.models.inputs import expected_input
from sharpscope.validation import check_int


def check_model_fits(model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, y: Tensor, *,
                     name: str = "the data", k: int | None = None) -> None:
    """Raise a one-line :mod:`sharpscope.errors` exception now, before any measurement or file,
    when the model cannot work on ``(x, y)``: ``k`` above the number of trainable parameters,
    inputs the model cannot take (one forward pass on two examples; the message names the input the
    model expects and the data's shape), a loss that fails, or an integer label outside the
    model's outputs."""
    if x.ndim < 1 or x.shape[0] < 1:
        raise ConfigError(f"{name} has inputs of shape {tuple(x.shape)}: no examples along the first axis")
    objective = Objective(model, loss_fn, (x[:2], y[:2]), validate=False)
    if k is not None and check_int("k", k, low=1) > objective.dim:
        raise ConfigError(f"k={k} exceeds the number of trainable parameters ({objective.dim})")
    batch = objective.batches[0]
    shape = f"{tuple(x.shape[1:])} per example (batch {tuple(batch.x.shape)})"
    with torch.no_grad(), objective.mode():
        try:
            out = objective.output_fn(model(batch.x))  # the objective's output adapter (e.g. ``.logits``)
        except SharpscopeError:
            raise
        except Exception as e:  # a conv/matmul/reshape error: the shapes do not fit
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ConfigError(f"the model expects inputs {expected_input(model)}, but {name} has inputs of shape "
                              f"{shape} ({first})") from None
        if not isinstance(out, Tensor):
            raise ConfigError(f"the model returned a {type(out).__name__} on {name}, not a tensor of outputs")
        objective.output_loss(out, batch)
    if not y.is_floating_point() and out.ndim == 2:
        low, high = int(y.min()), int(y.max())
        if low < 0 or high >= out.shape[1]:
            raise ConfigError(f"{name} has labels {low}..{high} but the model has {out.shape[1]} outputs")
