"""Arithmetic of curvature products: strict float32 by default, TF32 or bfloat16 on request.

Strict float32 rounds each operation to a relative ``2⁻²⁴ ≈ 6e-8``. TF32 matmuls and convolutions
(CUDA) keep 10 mantissa bits of their inputs (``2⁻¹¹ ≈ 5e-4``); bfloat16 autocast keeps 8
(``2⁻⁹ ≈ 2e-3``) and accumulates matmul sums in float32. Hessian-vector products computed with
either carry relative errors of about 1e-3, the size of a typical eigen-solver tolerance, so they
are opt-in, and an operator using them measures its deviation from strict products (see
:func:`relative_deviation`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal, get_args

import torch
from torch import Tensor

from sharpscope.curvature.sampling import Stopwatch
from sharpscope.errors import ConfigError
from sharpscope.validation import check_choice

ProductPrecision = Literal["strict", "tf32", "bf16"]
PRECISIONS: tuple[ProductPrecision, ...] = get_args(ProductPrecision)


@contextlib.contextmanager
def strict_fp32() -> Iterator[None]:
    """Run the block with IEEE float32 matmuls and convolutions on CUDA (TF32 off), restored afterwards."""
    with _cuda_fp32("ieee"):
        yield


@contextlib.contextmanager
def _cuda_fp32(mode: str) -> Iterator[None]:
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv  # type: ignore[attr-defined]  # not in torch's stubs
    saved = (matmul.fp32_precision, conv.fp32_precision)
    matmul.fp32_precision, conv.fp32_precision = mode, mode
    try:
        yield
    finally:
        matmul.fp32_precision, conv.fp32_precision = saved


def resolve_precision(precision: str, dtype: torch.dtype) -> ProductPrecision:
    """``precision`` checked: one of :data:`PRECISIONS`, and ``"bf16"`` only for an objective that
    computes in float32."""
    checked = check_choice("precision", precision, PRECISIONS)
    if checked == "bf16" and dtype != torch.float32:
        raise ConfigError(f"precision='bf16' autocasts float32 products; this objective computes in "
                          f"{str(dtype).removeprefix('torch.')}", argument="precision")
    return checked


class MeasuredPrecision:
    """For an operator whose products may be fast (TF32, bf16) or compiled: at the first product,
    multiply one fixed Gaussian vector (seed 0) strictly and eagerly and as configured, and keep
    ``‖Av − Av_strict‖ / ‖Av_strict‖`` (:meth:`precision_record`).

    The operator sets ``precision`` and ``compile``, calls :meth:`_init_precision_check`, implements
    :meth:`_strict_and_configured` and calls :meth:`_check_products_once` before its first product.
    """

    precision: ProductPrecision
    compile: bool
    dim: int
    dtype: torch.dtype
    device: torch.device

    def _init_precision_check(self) -> None:
        self.check: dict[str, object] | None = None
        self._check_pending = self.compile or self.precision != "strict"

    def _strict_and_configured(self, v: Tensor) -> tuple[Tensor, Tensor]:
        """The products of the rows ``v`` strictly and eagerly, then as configured."""
        raise NotImplementedError

    def _check_details(self) -> dict[str, object]:
        """More to record with the deviation (e.g. the product mode)."""
        return {}

    def _check_products_once(self) -> None:
        if not self._check_pending:
            return
        self._check_pending = False
        clock = Stopwatch(self.device)
        gen = torch.Generator().manual_seed(0)
        v = torch.randn(1, self.dim, generator=gen, dtype=torch.float64).to(self.device, self.dtype)
        reference, candidate = self._strict_and_configured(v)
        self.check = {"deviation": relative_deviation(candidate, reference), "vectors": 1, "hvps": 2,
                      "seconds": clock.seconds(), **self._check_details(),
                      "measure": "‖Av − Av_strict‖ / ‖Av_strict‖ for one Gaussian vector (seed 0), against "
                                 "strict eager products"}

    def precision_record(self) -> dict[str, object]:
        """The products' arithmetic and, for fast or compiled products, their measured relative deviation
        from strict eager ones (``None`` for strict eager products, which are the reference)."""
        record: dict[str, object] = {"precision": self.precision, "compiled": self.compile}
        if self.check is not None:
            return {**record, **self.check}
        reason = "not yet measured (no product taken)" if self._check_pending else "strict eager products are the reference"
        return {**record, "deviation": None, "reason": reason}


@contextlib.contextmanager
def product_precision(precision: ProductPrecision, device: torch.device) -> Iterator[None]:
    """Run the block in the given arithmetic: ``"strict"`` IEEE float32 matmuls and convolutions;
    ``"tf32"`` TF32 matmuls and convolutions (CUDA only; the CPU has no TF32 path, so products there
    equal strict ones); ``"bf16"`` autocast of matmuls and convolutions to bfloat16 on the device."""
    if precision == "tf32":
        with _cuda_fp32("tf32"):
            yield
        return
    with strict_fp32():
        if precision == "bf16":
            with torch.autocast(device.type, dtype=torch.bfloat16):
                yield
        else:
            yield


def relative_deviation(candidate: Tensor, reference: Tensor) -> float:
    """``‖candidate − reference‖ / ‖reference‖`` in float64 (0 when both are zero, ∞ when only the reference is)."""
    diff = float((candidate.double() - reference.double()).norm())
    scale = float(reference.double().norm())
    if scale == 0:
        return 0.0 if diff == 0 else float("inf")
    return diff / scale
