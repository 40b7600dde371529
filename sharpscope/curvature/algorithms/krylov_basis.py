"""An orthonormal Krylov basis that grows in chunks, so memory follows the steps actually taken.

Lanczos with full re-orthogonalisation keeps every basis vector ``q_1 … q_m``. Allocating
``max_iter`` vectors up front costs ``max_iter · dim`` numbers even when the iteration stops after
a few steps (100 × 11.2 M floats for a ResNet-18 that converges in 8). Here the vectors live in
chunks of ``chunk`` rows, a new chunk is allocated only when the last one is full, and nothing is
copied, so the basis never holds more than ``(m + chunk) · dim`` numbers.

Re-orthogonalisation is classical Gram–Schmidt applied twice ("twice is enough"):
``c = Qᵀ w``, ``w ← w − Q c``, with ``Qᵀ w`` and ``Q c`` summed chunk by chunk; ``w`` may be one
vector ``(dim,)`` or a block ``(dim, m)`` (block Lanczos), orthogonalised column by column at once.
"""

from __future__ import annotations

import torch
from torch import Tensor

DEFAULT_CHUNK = 16


class KrylovBasis:
    """Orthonormal vectors of length ``dim`` stored as rows of ``(chunk, dim)`` blocks."""

    def __init__(self, dim: int, dtype: torch.dtype, device: torch.device, *, chunk: int = DEFAULT_CHUNK) -> None:
        self.dim, self.dtype, self.device, self.chunk = dim, dtype, device, max(1, int(chunk))
        self._blocks: list[Tensor] = []
        self.size = 0

    @property
    def allocated(self) -> int:
        """Vectors' worth of memory allocated so far (a multiple of ``chunk``)."""
        return len(self._blocks) * self.chunk

    def append(self, v: Tensor) -> None:
        """Store ``v`` (shape ``(dim,)``, assumed unit and orthogonal to the basis) as the next vector."""
        if self.size == self.allocated:
            self._blocks.append(torch.empty(self.chunk, self.dim, dtype=self.dtype, device=self.device))
        self._blocks[-1][self.size % self.chunk] = v
        self.size += 1

    def append_columns(self, V: Tensor) -> None:
        """Store the columns of ``V`` (``(dim, m)``, orthonormal and orthogonal to the basis) in order."""
        for i in range(V.shape[1]):
            self.append(V[:, i])

    def vector(self, j: int) -> Tensor:
        """The ``j``-th basis vector (a view)."""
        return self._blocks[j // self.chunk][j % self.chunk]

    def columns(self, start: int, stop: int) -> Tensor:
        """Basis vectors ``start … stop − 1`` as the columns of a ``(dim, stop − start)`` tensor (a copy)."""
        return torch.stack([self.vector(j) for j in range(start, stop)], dim=1)

    def _filled(self) -> list[Tensor]:
        out = []
        for i, block in enumerate(self._blocks):
            rows = min(self.chunk, self.size - i * self.chunk)
            if rows > 0:
                out.append(block[:rows])
        return out

    def orthogonalize(self, w: Tensor) -> tuple[Tensor, Tensor]:
        """Remove from ``w`` (``(dim,)`` or ``(dim, m)``) its components on the basis, twice; return it and
        ``Qᵀ w`` summed over both passes (``(size,)`` or ``(size, m)``)."""
        blocks = self._filled()
        coeffs = torch.zeros(self.size, *w.shape[1:], dtype=w.dtype, device=w.device)
        for _ in range(2):
            c = torch.cat([block @ w for block in blocks])
            start = 0
            for block in blocks:
                w = w - block.T @ c[start:start + block.shape[0]]
                start += block.shape[0]
            coeffs += c
        return w, coeffs

    def combine(self, s: Tensor) -> Tensor:
        """``Q s`` for coefficients ``s`` of shape ``(size, k)``: the Ritz vectors, ``(dim, k)``."""
        out = torch.zeros(self.dim, s.shape[1], dtype=self.dtype, device=self.device)
        start = 0
        for block in self._filled():
            out += block.T @ s[start:start + block.shape[0]]
            start += block.shape[0]
        return out
