"""Inner products, norms and orthonormal bases of vectors that may be split over processes.

A sharded operator's vectors live in slices, one per process (see
:attr:`~sharpscope.curvature.operators.linear_operator.LinearOperator.global_dim`). Every quantity
that sums over coordinates is then a local partial sum followed by
:meth:`~sharpscope.curvature.operators.linear_operator.LinearOperator.allsum`; everything else
(scaling, adding, combining basis vectors with coefficients) acts on each slice alone. For an
ordinary operator the sum over slices is the identity and these are the plain operations.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from sharpscope.curvature.operators.linear_operator import LinearOperator


def inner(op: LinearOperator, X: Tensor, Y: Tensor) -> Tensor:
    """``Xᵀ Y`` over all slices (``x·y`` for two vectors)."""
    return op.allsum(X.T @ Y if X.ndim == 2 else X @ Y)


def column_dots(op: LinearOperator, X: Tensor, Y: Tensor) -> Tensor:
    """``x_iᵀ y_i`` for the columns of ``X`` and ``Y`` (``(dim, m)`` each), over all slices."""
    return op.allsum((X * Y).sum(dim=0))


def vector_norm(op: LinearOperator, v: Tensor) -> Tensor:
    """``‖v‖`` over all slices."""
    return op.allsum(v @ v).sqrt()


def column_norms(op: LinearOperator, V: Tensor) -> Tensor:
    """``‖v_i‖`` for the columns of ``V`` over all slices."""
    return column_dots(op, V, V).sqrt()


def allsum_on(op: LinearOperator) -> Callable[[Tensor], Tensor] | None:
    """The operator's sum over slices for tensors anywhere (moved to its device for the reduction, as a
    GPU process group needs), or ``None`` for an operator whose vectors are whole."""
    if not op.sharded and type(op).allsum is LinearOperator.allsum:
        return None
    return lambda t: op.allsum(t.to(op.device)).to(t.device)


def orthonormal_columns(op: LinearOperator, V: Tensor) -> Tensor:
    """An orthonormal basis of the span of the columns of ``V`` (``(dim, m)``, full column rank).

    An operator with whole vectors uses a Householder QR. Sliced vectors use the Gram matrix
    ``G = VᵀV`` summed over slices: with ``G = U Λ Uᵀ``, ``V U Λ^{-1/2}`` is orthonormal, up to an
    error of about ``κ(V)² ε``; a second pass brings that to ``ε`` ("twice is enough"), so the result
    is as orthonormal as a QR's for any ``V`` whose condition number is below ``ε^{-1/2}``.
    """
    if allsum_on(op) is None:
        return torch.linalg.qr(V)[0]
    Q = V
    for _ in range(2):
        values, vectors = torch.linalg.eigh(inner(op, Q, Q).double())
        scale = vectors / values.clamp_min(torch.finfo(torch.float64).tiny).sqrt()
        Q = Q @ scale.to(Q.dtype)
    return Q
