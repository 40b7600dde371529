"""Losses with the conventions of the edge-of-stability papers, each a mean over examples.

The edge-of-stability thresholds hold for the Hessian of exactly the objective the optimizer
descends, so the constant factors matter:

* ``cross_entropy``: mean cross entropy over examples.
* ``mse`` (Cohen et al. 2021): ``½ ‖f(x) − e_y‖²`` summed over the outputs, mean over examples.
* ``mse_mean`` (Long & Bartlett 2024): ``(f(x) − e_y)²`` averaged over outputs *and* examples.
* ``token_cross_entropy``: mean cross entropy over every token of a language-model batch.
* ``next_token_cross_entropy``, ``masked_token_cross_entropy`` (Hugging Face batches, a mapping
  with ``input_ids`` and ``attention_mask``, optionally ``labels``): mean cross entropy over the
  tokens that are predicted, as Hugging Face causal and masked language models train; their
  counts (:func:`predicted_tokens`, :func:`masked_tokens`) make a probe set's objective the mean
  over all its predicted tokens, for any split into batches.

Integer labels are one-hot encoded for the squared losses; float targets are used as given.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from sharpscope.errors import ConfigError


def _targets(outputs: Tensor, targets: Tensor) -> Tensor:
    if targets.is_floating_point():
        return targets
    return F.one_hot(targets, outputs.shape[-1]).to(outputs.dtype)


def cross_entropy(outputs: Tensor, targets: Tensor) -> Tensor:
    """Mean cross entropy of logits ``outputs`` against integer labels (or class probabilities)."""
    return F.cross_entropy(outputs, targets)


def mse(outputs: Tensor, targets: Tensor) -> Tensor:
    """``(1/N) Σ_n ½ ‖f(x_n) − t_n‖²`` (Cohen et al.); integer labels become one-hot ``t_n``."""
    return 0.5 * (outputs - _targets(outputs, targets)).pow(2).sum(dim=-1).mean()


def mse_mean(outputs: Tensor, targets: Tensor) -> Tensor:
    """``(1/(N C)) Σ_n ‖f(x_n) − t_n‖²`` (Long & Bartlett); integer labels become one-hot ``t_n``."""
    return (outputs - _targets(outputs, targets)).pow(2).mean()


def token_cross_entropy(outputs: Tensor, targets: Tensor) -> Tensor:
    """Mean cross entropy over every token: logits ``(B, T, V)`` against ids ``(B, T)`` (language models)."""
    return F.cross_entropy(outputs.flatten(0, -2), targets.flatten())


IGNORE_INDEX = -100  # the label of a position that is not predicted (Hugging Face convention)


def _causal_labels(batch: Mapping[str, Tensor]) -> Tensor:
    """Labels of a causal-LM batch: ``batch["labels"]``, or ``input_ids`` with padding
    (``attention_mask == 0``) set to :data:`IGNORE_INDEX`; position ``t + 1`` is predicted from ``t``."""
    if "labels" in batch:
        return batch["labels"]
    ids = batch["input_ids"]
    mask = batch.get("attention_mask")
    return ids if mask is None else ids.masked_fill(mask == 0, IGNORE_INDEX)


def next_token_cross_entropy(logits: Tensor, batch: Mapping[str, Tensor]) -> Tensor:
    """``(1/T) Σ_{b,t} −log softmax(z_{b,t})[y_{b,t+1}]`` over the ``T`` predicted positions: logits
    ``(B, L, V)``, labels from :func:`_causal_labels` shifted by one, :data:`IGNORE_INDEX` skipped."""
    labels = _causal_labels(batch)[:, 1:]
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)


def predicted_tokens(batch: Mapping[str, Tensor]) -> Tensor:
    """The positions :func:`next_token_cross_entropy` averages over."""
    return (_causal_labels(batch)[:, 1:] != IGNORE_INDEX).sum()


def masked_token_cross_entropy(logits: Tensor, batch: Mapping[str, Tensor]) -> Tensor:
    """Mean cross entropy over the labelled (masked) positions of a masked-LM batch, no shift:
    ``batch["labels"]`` holds the original token at each masked position and :data:`IGNORE_INDEX` elsewhere."""
    return F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE_INDEX)


def masked_tokens(batch: Mapping[str, Tensor]) -> Tensor:
    """The positions :func:`masked_token_cross_entropy` averages over."""
    return (batch["labels"] != IGNORE_INDEX).sum()


LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {"ce": cross_entropy, "mse": mse, "mse-mean": mse_mean,
                                                         "token-ce": token_cross_entropy}


def get_loss(name: str) -> Callable[[Tensor, Tensor], Tensor]:
    """The loss registered as ``name`` (``ce``, ``mse``, ``mse-mean``)."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ConfigError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}") from None


def accuracy(outputs: Tensor, targets: Tensor) -> float:
    """Fraction of rows whose arg-max output equals the label (or the target's arg-max)."""
    return float(correct_fraction(outputs, targets))


def correct_fraction(outputs: Tensor, targets: Tensor) -> Tensor:
    """:func:`accuracy` over the last two dimensions of ``outputs`` ``(..., n, classes)``: the
    fraction of the ``n`` rows whose arg-max equals the label, for each leading index (a stack of
    outputs at several parameter points gives one accuracy per point)."""
    labels = targets.argmax(dim=-1) if targets.is_floating_point() else targets
    return (outputs.argmax(dim=-1) == labels).to(torch.float64).mean(dim=-1)
