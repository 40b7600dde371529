"""The linear-operator interface every curvature algorithm consumes.

An operator is a symmetric map ``v -> A v`` on ``R^dim`` with a dtype and a device. Algorithms only
call :meth:`matmat` (a block of vectors as the columns of a ``(dim, m)`` tensor), so an operator
that can multiply many vectors in one pass (vmapped Hessian-vector products) gets that speed-up in
every algorithm. Each operator counts the vectors it has multiplied, which is how results report
their cost in HVPs, and calls ``on_matmat`` (if set) after each product, for progress display.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from sharpscope.errors import ConfigError
from sharpscope.validation import check_int, check_type

if TYPE_CHECKING:
    import scipy.sparse.linalg


def check_operator(op: object, name: str = "op") -> None:
    """Refuse, naming ``name``, anything that is not a :class:`LinearOperator` (a matrix, a model, a
    string): every algorithm calls it first, so a wrong argument is one line, not a deep type error."""
    check_type(name, op, LinearOperator, "a sharpscope LinearOperator (HessianOperator(objective), GGNOperator, "
               "MatrixOperator(matrix), LambdaOperator(fn, dim), ...)")


class LinearOperator:
    """Base class: subclasses implement :meth:`_matmat`; counting and shape checks live here."""

    def __init__(self, dim: int, dtype: torch.dtype, device: torch.device) -> None:
        if dim < 1:
            raise ConfigError(f"operator dimension must be positive, got {dim}")
        self.dim = int(dim)
        self.dtype = dtype
        self.device = torch.device(device)
        self.matvecs = 0
        self.on_matmat: Callable[[], None] | None = None

    def _matmat(self, V: Tensor) -> Tensor:
        raise NotImplementedError

    def matmat(self, V: Tensor) -> Tensor:
        """Return ``A V`` for the columns of ``V`` (shape ``(dim, m)``); counts ``m`` products."""
        check_type("V", V, Tensor, "a torch.Tensor")
        if V.ndim != 2 or V.shape[0] != self.dim:
            raise ConfigError(f"matmat expects a ({self.dim}, m) tensor, got shape {tuple(V.shape)}")
        out = self._matmat(V.to(device=self.device, dtype=self.dtype))
        self.matvecs += V.shape[1]
        if self.on_matmat is not None:
            self.on_matmat()
        return out

    def matvec(self, v: Tensor) -> Tensor:
        """Return ``A v`` for one vector of shape ``(dim,)``."""
        check_type("v", v, Tensor, "a torch.Tensor")
        if v.ndim != 1 or v.shape[0] != self.dim:
            raise ConfigError(f"matvec expects a ({self.dim},) vector, got shape {tuple(v.shape)}")
        return self.matmat(v[:, None])[:, 0]

    def __matmul__(self, other: Tensor) -> Tensor:
        check_type("other", other, Tensor, "a torch.Tensor")
        return self.matvec(other) if other.ndim == 1 else self.matmat(other)

    def to_scipy(self) -> scipy.sparse.linalg.LinearOperator:
        """The operator as a ``scipy.sparse.linalg.LinearOperator`` on float64 NumPy arrays.

        Vectors are converted to the operator's dtype and device for each product and the result
        back to float64 on the CPU; products are counted in :attr:`matvecs` as usual. Symmetric, so
        the adjoint products are the products themselves. Use it with ``eigsh``, ``cg``, ``lobpcg``.
        """
        import scipy.sparse.linalg

        if self.sharded:
            raise ConfigError("a sharded operator has no single-process SciPy form: each process holds a slice "
                              "of every vector; use sharpscope's algorithms, which work on the slices")

        def matmat(X: np.ndarray) -> np.ndarray:
            block = torch.as_tensor(np.asarray(X, dtype=np.float64).reshape(self.dim, -1))
            return self.matmat(block).detach().to("cpu", torch.float64).numpy()

        def matvec(x: np.ndarray) -> np.ndarray:
            return matmat(x).reshape(-1)

        return scipy.sparse.linalg.LinearOperator((self.dim, self.dim), matvec=matvec, rmatvec=matvec,
                                                  matmat=matmat, rmatmat=matmat, dtype=np.float64)

    # ------------------------------------------------------------------ the vector space
    # A sharded operator's vectors are split over processes: each holds the slice of every vector that
    # matches its slice of the parameters. Algorithms therefore take inner products, norms and random
    # draws through these methods; for an ordinary operator they are the plain local operations.

    @property
    def global_dim(self) -> int:
        """The dimension of the space the operator acts on. :attr:`dim` is the length of the vectors
        this process holds: the same number, except for a sharded operator (a slice on each rank)."""
        return self.dim

    @property
    def sharded(self) -> bool:
        """Whether this process holds only a slice of each vector (see :attr:`global_dim`)."""
        return self.dim != self.global_dim

    def allsum(self, partial: Tensor) -> Tensor:
        """The sum over all slices of ``partial``, a result computed from this process's slices (for
        example ``XᵀY`` of local slices, which summed gives the inner products); the identity here."""
        return partial

    def common_count(self, n: int) -> int:
        """The smallest ``n`` over all processes, so that a choice made from local memory (how many
        vectors fit) is the same everywhere; ``n`` here."""
        return n

    def draw_columns(self, m: int, distribution: str, gen: torch.Generator) -> Tensor:
        """``m`` random vectors (``"gaussian"``: standard normal entries; ``"rademacher"``: ±1) as the
        columns of a ``(dim, m)`` tensor in float64 on the CPU, drawn one whole vector after another
        from ``gen``."""
        if distribution == "rademacher":
            columns = [torch.randint(0, 2, (self.dim,), generator=gen).to(torch.float64).mul_(2).sub_(1)
                       for _ in range(m)]
        elif distribution == "gaussian":
            columns = [torch.randn(self.dim, generator=gen, dtype=torch.float64) for _ in range(m)]
        else:
            raise ConfigError(f"distribution must be 'rademacher' or 'gaussian', got {distribution!r}")
        return torch.stack(columns, dim=1)

    def settle_memory(self) -> None:
        """Allocate now whatever the operator will keep between products (a graph cache, say), so that
        an algorithm's memory budget, taken from the free memory after this call, leaves room for it."""

    def precision_record(self) -> dict[str, object] | None:
        """How the products' arithmetic departs from the operator's dtype, with its measured deviation;
        ``None`` when the products are computed plainly in that dtype."""
        return None

    def describe(self) -> dict[str, object]:
        """Settings that say how a number computed from this operator was obtained."""
        return {"operator": type(self).__name__, "dim": self.dim, "dtype": str(self.dtype).removeprefix("torch."),
                "device": str(self.device)}


class MatrixOperator(LinearOperator):
    """A dense symmetric matrix as an operator (tests, exact Hessians, small problems)."""

    def __init__(self, matrix: Tensor) -> None:
        check_type("matrix", matrix, Tensor, "a torch.Tensor")
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ConfigError(f"MatrixOperator needs a square matrix, got shape {tuple(matrix.shape)}")
        super().__init__(matrix.shape[0], matrix.dtype, matrix.device)
        self.matrix = matrix

    def _matmat(self, V: Tensor) -> Tensor:
        return self.matrix @ V


class LambdaOperator(LinearOperator):
    """An operator given by a function ``V -> A V`` on ``(dim, m)`` blocks."""

    def __init__(self, fn: Callable[[Tensor], Tensor], dim: int, *, dtype: torch.dtype = torch.float64,
                 device: torch.device | str = "cpu") -> None:
        if not callable(fn):
            raise ConfigError(f"fn must be callable (a (dim, m) block -> A times it), got {type(fn).__name__}",
                              argument="fn")
        check_int("dim", dim, low=1)
        super().__init__(dim, dtype, torch.device(device))
        self.fn = fn

    def _matmat(self, V: Tensor) -> Tensor:
        out = self.fn(V)
        if not isinstance(out, Tensor) or tuple(out.shape) != tuple(V.shape):
            got = f"shape {tuple(out.shape)}" if isinstance(out, Tensor) else type(out).__name__
            raise ConfigError(f"LambdaOperator's fn must map a ({self.dim}, m) block to a ({self.dim}, m) tensor; "
                              f"for shape {tuple(V.shape)} it returned {got}", argument="fn")
        return out
