"""An orthonormal Krylov basis that grows in chunks, so memory follows the steps actually taken.

Lanczos with full re-orthogonalisation keeps every basis vector ``q_1 … q_m``. Allocating
``max_iter`` vectors up front costs ``max_iter · dim`` numbers even when the iteration stops after
a few steps (100 × 11.2 M floats for a ResNet-18 that converges in 8). Here the vectors live in
chunks of ``chunk`` rows, a new chunk is allocated only when the last one is full, and nothing is
copied, so the basis never holds more than ``(m + chunk) · dim`` numbers.

A restarted Lanczos run compresses the basis in place (:meth:`KrylovBasis.restart`) and reuses
the chunks already allocated. On a GPU the basis may live in (pinned) host memory while the model
and the product vectors stay on the device: each step then moves one vector each way.

Re-orthogonalisation is classical Gram–Schmidt applied twice ("twice is enough"):
``c = Qᵀ w``, ``w ← w − Q c``, with ``Qᵀ w`` and ``Q c`` summed chunk by chunk; ``w`` may be one
vector ``(dim,)`` or a block ``(dim, m)`` (block Lanczos), orthogonalised column by column at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, get_args

import torch
from torch import Tensor

DEFAULT_CHUNK = 16
BasisLocation = Literal["device", "host"]
BASIS_LOCATIONS: tuple[str, ...] = get_args(BasisLocation)


def basis_device(device: torch.device, location: str) -> torch.device:
    """Where a Krylov basis lives: beside the operator (on ``device``), or in host memory."""
    return torch.device("cpu") if location == "host" else torch.device(device)


class KrylovBasis:
    """Orthonormal vectors of length ``dim`` stored as rows of ``(chunk, dim)`` blocks."""

    def __init__(self, dim: int, dtype: torch.dtype, device: torch.device, *, chunk: int = DEFAULT_CHUNK,
                 pinned: bool = False, allsum: Callable[[Tensor], Tensor] | None = None) -> None:
        self.dim, self.dtype, self.device, self.chunk = dim, dtype, torch.device(device), max(1, int(chunk))
        self._allsum = allsum  # a sharded operator's sum over slices: ``Qᵀ w`` of local slices is a partial sum
        self.pinned = pinned and self.device.type == "cpu" and torch.cuda.is_available()
        self._blocks: list[Tensor] = []
        self.size = 0

    @property
    def allocated(self) -> int:
        """Vectors' worth of memory allocated so far (a multiple of ``chunk``)."""
        return len(self._blocks) * self.chunk

    def append(self, v: Tensor) -> None:
        """Store ``v`` (shape ``(dim,)``, assumed unit and orthogonal to the basis) as the next vector."""
        if self.size == self.allocated:
            empty = torch.empty(self.chunk, self.dim, dtype=self.dtype, device=self.device,
                                pin_memory=self.pinned)
            self._blocks.append(empty)
        self._blocks[self.size // self.chunk][self.size % self.chunk] = v
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
        ``Qᵀ w`` summed over both passes (``(size,)`` or ``(size, m)``), on the basis' device."""
        w = w.to(self.device)
        blocks = self._filled()
        coeffs = torch.zeros(self.size, *w.shape[1:], dtype=w.dtype, device=w.device)
        for _ in range(2):
            c = torch.cat([block @ w for block in blocks])
            if self._allsum is not None:
                c = self._allsum(c)
            start = 0
            for block in blocks:  # w − Q c in one allocation per chunk (no Q c temporary)
                part = c[start:start + block.shape[0]]
                w = torch.addmv(w, block.T, part, alpha=-1) if w.ndim == 1 else torch.addmm(w, block.T, part, alpha=-1)
                start += block.shape[0]
            coeffs += c
        return w, coeffs

    def combine(self, s: Tensor) -> Tensor:
        """``Q s`` for coefficients ``s`` of shape ``(size, k)``: the Ritz vectors, ``(dim, k)``, accumulated
        in place (no scratch vectors)."""
        s = s.to(self.device, self.dtype)
        out = torch.zeros(self.dim, s.shape[1], dtype=self.dtype, device=self.device)
        start = 0
        for block in self._filled():
            out.addmm_(block.T, s[start:start + block.shape[0]])
            start += block.shape[0]
        return out

    def restart(self, s: Tensor) -> None:
        """Replace the basis by its first ``l`` combinations ``Q s`` (``s``: ``(size, l)`` with orthonormal
        columns), in place: the new vectors are computed a slice of coordinates at a time, so the
        restart needs one vector's worth of scratch memory beyond the basis itself."""
        s = s.to(self.device, self.dtype)
        keep = s.shape[1]
        blocks = self._filled()
        step = max(1, self.dim // max(self.size, 1))
        for start in range(0, self.dim, step):
            stop = min(start + step, self.dim)
            old = torch.cat([block[:, start:stop] for block in blocks])  # (size, width)
            new = s.T @ old
            for j in range(keep):
                self._blocks[j // self.chunk][j % self.chunk, start:stop] = new[j]
        self.size = keep
