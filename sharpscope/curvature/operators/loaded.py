"""Products on models as users load them: fused attention, activation checkpointing, KV caches.

Hessian-vector products need a second derivative of every operation of the forward pass, and
models loaded from Hugging Face carry three things that get in the way:

* **Fused attention.** PyTorch's flash and memory-efficient ``scaled_dot_product_attention``
  kernels (``attn_implementation="sdpa"``, the default) have a first derivative only: double
  backward fails (``derivative for ..._backward is not implemented``) and so does forward mode.
  Products run with the math SDPA backend (``torch.nn.attention.sdpa_kernel(SDPBackend.MATH)``),
  the same function written in differentiable operations, so the product is exact. Other
  attention implementations of a Hugging Face model (``flash_attention_2``, ``flex_attention``)
  are replaced by ``sdpa`` with that backend during products.
* **Activation checkpointing** (``gradient_checkpointing_enable()``). Checkpointed layers recompute
  their forward in the backward pass; they stay checkpointed during products (their ``training``
  flag stays on while every other module, dropout included, is in eval mode). Reentrant
  checkpointing has no ``torch.autograd.grad`` and no double backward, so a layer set up with it
  runs non-reentrant checkpointing during products (same values, exact products). Neither supports
  ``torch.func`` transforms, so products through checkpointed layers are double backward. A layer
  that samples dropout itself in training mode (``F.dropout(..., training=self.training)``, as
  BART's decoder layers do) would make products random: the objective evaluates one batch twice
  under different seeds and, if the losses differ, runs products without checkpointing (recorded).
* **The KV cache** (``use_cache``) is off during products: a cached key/value would be appended
  again when a checkpointed layer is recomputed, and a probe never generates.

:func:`loaded_setup` reads a model once and returns a :class:`LoadedSetup` that the objective
enters around every evaluation; its :meth:`LoadedSetup.describe` is the record.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

#: Attention implementations of a Hugging Face model that need no change for products.
_EXACT_ATTENTION = ("eager", "sdpa")

#: Words of the errors that fused attention kernels raise under double backward or forward mode.
FUSED_ATTENTION_ERRORS = ("scaled_dot_product", "flash_attention", "efficient_attention", "_cudnn_attention")


def is_fused_attention_error(error: BaseException) -> bool:
    """Whether ``error`` is a fused attention kernel's missing higher derivative."""
    text = str(error)
    return isinstance(error, (RuntimeError, NotImplementedError)) and any(w in text for w in FUSED_ATTENTION_ERRORS)


def _reentrant(fn: object) -> bool:
    """Whether a layer's checkpoint function is reentrant (``use_reentrant=True`` in its partial)."""
    return isinstance(fn, functools.partial) and fn.keywords.get("use_reentrant") is True


@dataclass
class LoadedSetup:
    """What products change on a loaded model, entered by :meth:`context`; mutable only through
    :meth:`use_math_attention` (a fused-attention failure found at run time)."""

    model: nn.Module
    attention: str | None  # the Hugging Face attention implementation, None for other models
    math_attention: bool
    attention_reason: str
    checkpointed: list[nn.Module] = field(default_factory=list)
    reentrant: int = 0
    use_cache: bool = False  # the model's config has use_cache on (switched off during products)

    checkpointing_off: str | None = None  # why checkpointing is off during products, when it is

    def stop_checkpointing(self, reason: str) -> None:
        """Run products with the checkpointed layers in eval mode (no recomputation), recording why."""
        self.checkpointed, self.reentrant, self.checkpointing_off = [], 0, reason

    def use_math_attention(self, reason: str) -> None:
        """Run every later evaluation with the math SDPA backend, recording why."""
        self.math_attention = True
        self.attention_reason = reason

    @contextlib.contextmanager
    def context(self) -> Iterator[None]:
        """Enter after the model is put in eval mode: checkpointed layers back in training mode
        (non-reentrant), the KV cache off, the attention kernel for exact products."""
        config = getattr(self.model, "config", None)
        saved_funcs: list[tuple[nn.Module, Any]] = [(m, m._gradient_checkpointing_func) for m in self.checkpointed]
        saved_cache = getattr(config, "use_cache", None)
        saved_attention = getattr(config, "_attn_implementation", None)
        try:
            for m, fn in saved_funcs:
                m.training = True  # the layer itself only: its dropout children stay in eval mode
                if _reentrant(fn):
                    setattr(m, "_gradient_checkpointing_func",  # noqa: B010 (a plain attribute, not a submodule)
                            functools.partial(fn.func, *fn.args, **{**fn.keywords, "use_reentrant": False}))
            if self.use_cache:
                config.use_cache = False  # type: ignore[union-attr]
            if self.attention is not None and self.attention not in _EXACT_ATTENTION:
                config._attn_implementation = "sdpa"  # type: ignore[union-attr]
            with sdpa_kernel(SDPBackend.MATH) if self.math_attention else contextlib.nullcontext():
                yield
        finally:
            for m, fn in saved_funcs:
                setattr(m, "_gradient_checkpointing_func", fn)  # noqa: B010
            if self.use_cache:
                config.use_cache = saved_cache  # type: ignore[union-attr]
            if self.attention is not None and self.attention not in _EXACT_ATTENTION:
                config._attn_implementation = saved_attention  # type: ignore[union-attr]

    def describe(self) -> dict[str, object]:
        """The record: attention kernel used for products and why; checkpointed layers and how."""
        checkpointing: dict[str, object] | None = None
        if self.checkpointing_off is not None:
            checkpointing = {"layers": 0, "products": "without checkpointing (layers in eval mode)",
                             "reason": self.checkpointing_off}
        if self.checkpointed:
            checkpointing = {"layers": len(self.checkpointed), "reentrant_layers": self.reentrant,
                             "products": "layers stay checkpointed, recomputed inside each product (non-reentrant"
                                         + (": reentrant layers switched for products)" if self.reentrant else ")")}
        return {"attention": {"implementation": self.attention,
                              "kernel": "math SDPA backend" if self.math_attention else "as the model runs it",
                              "reason": self.attention_reason},
                "checkpointing": checkpointing, "kv_cache": "off during products" if self.use_cache else None}


def loaded_setup(model: nn.Module) -> LoadedSetup:
    """Read the attention implementation, checkpointed layers and KV-cache flag of ``model``.

    Hugging Face models say which attention they use (``config._attn_implementation``): anything but
    ``eager`` is run with the math SDPA backend (predicted from the config, no failed product first).
    Other models are run as they are; a fused-attention failure found at the first product switches
    them to the math backend (:meth:`LoadedSetup.use_math_attention`).
    """
    config = getattr(model, "config", None)
    attention = getattr(config, "_attn_implementation", None)
    attention = attention if isinstance(attention, str) else None
    if attention is None:
        math, reason = False, "not a Hugging Face model: fused attention is detected at the first product"
    elif attention == "eager":
        math, reason = False, "eager attention is differentiable to any order"
    else:
        math = True
        reason = (f"attn_implementation={attention!r}"
                  + ("" if attention == "sdpa" else " replaced by 'sdpa'")
                  + ": fused SDPA kernels have no double backward or forward-mode derivative")
    layers = [m for m in model.modules() if getattr(m, "gradient_checkpointing", False) is True
              and callable(getattr(m, "_gradient_checkpointing_func", None))
              and any(c.__name__ == "GradientCheckpointingLayer" for c in type(m).__mro__)]
    reentrant = sum(_reentrant(m._gradient_checkpointing_func) for m in layers)
    use_cache = bool(getattr(config, "use_cache", False))
    return LoadedSetup(model, attention, math, reason, layers, reentrant, use_cache)

