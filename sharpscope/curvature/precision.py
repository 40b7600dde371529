"""Strict float32 arithmetic for curvature work: TF32 off unless the caller asks for it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def fp32_precision(allow_tf32: bool) -> Iterator[None]:
    """Run the block with IEEE float32 matmuls and convolutions (or leave TF32 as configured).

    TF32 keeps 10 mantissa bits; Hessian-vector products computed with it carry relative errors
    around 1e-3, the same size as a typical eigen-solver tolerance, so it is off by default.
    """
    if allow_tf32:
        yield
        return
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv  # type: ignore[attr-defined]  # not in torch's stubs
    saved = (matmul.fp32_precision, conv.fp32_precision)
    matmul.fp32_precision, conv.fp32_precision = "ieee", "ieee"
    try:
        yield
    finally:
        matmul.fp32_precision, conv.fp32_precision = saved
