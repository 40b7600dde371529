"""Loss and accuracy of an objective at many points ``θ + Σ_j c_pj d_j`` of parameter space.

Each point's value is the objective's: ``L(θ_p) = Σ_b (n_b / N) ℓ_b(θ_p)`` over its fixed batches,
in its BatchNorm mode with dropout off, and the accuracy likewise weighted by batch sizes. Points
are taken in chunks: the chunk's parameter vectors are built at once and the model is run on
each batch for all of them with ``torch.vmap`` over :func:`torch.func.functional_call`
(``method="vmap"``), or one point after another (``"loop"``). Which is faster depends on the
model and the device (on CPUs a vmapped convolution over a stack of weights is often slower than
the loop), so ``"auto"`` times both on a few points of the first batch and keeps the faster one
that works; models vmap cannot batch (data-dependent control flow, in-place updates of inputs)
get the loop. The trial and the choice are recorded. On CUDA out-of-memory the chunk is halved. Under
``torch.distributed`` each rank evaluates its shard of the probe set and the sums are reduced
across ranks, as for the objective's loss.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import torch
from torch import Tensor

from sharpscope.curvature import Objective
from sharpscope.curvature.operators.distributed import from_rank0, sum_across_ranks
from sharpscope.curvature.operators.precision import ProductPrecision, product_precision, resolve_precision
from sharpscope.curvature.sampling import Stopwatch
from sharpscope.errors import ConfigError, ObjectiveError
from sharpscope.validation import check_choice, check_int

Method = Literal["auto", "vmap", "loop"]
GridProgress = Callable[[int, int], None]
GRID_MEMORY_SHARE = 0.25  # a slice grid may take at most this share of the machine's memory


def grid_bytes(sizes: list[int] | tuple[int, ...]) -> int:
    """Bytes the arrays of a grid with these axis sizes hold: per point, float64 coordinates and
    mesh entries for each axis plus loss and accuracy, twice over for the copies made on saving,
    ``16 (2d + 2)`` bytes for ``d`` axes."""
    points = 1
    for n in sizes:
        points *= int(n)
    return 16 * (2 * len(sizes) + 2) * points


def check_grid_memory(sizes: list[int] | tuple[int, ...], *, total: int | None = None) -> int:
    """The number of grid points if :func:`grid_bytes` stays within ``GRID_MEMORY_SHARE`` of the
    machine's memory (``total`` bytes; read from the system when None), else :class:`ConfigError`
    with the estimate; checked before any array is allocated."""
    if total is None:
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
            total = 16 * 2**30
    need = grid_bytes(sizes)
    if need > GRID_MEMORY_SHARE * total:
        points = grid_bytes(sizes) // (16 * (2 * len(sizes) + 2))
        raise ConfigError(f"a grid of {' × '.join(map(str, sizes))} = {points:,} points needs about "
                          f"{need / 2**30:.3g} GiB for its arrays, more than {GRID_MEMORY_SHARE:.0%} of this machine's "
                          f"{total / 2**30:.3g} GiB; use fewer points")
    return need // (16 * (2 * len(sizes) + 2))


@dataclass(frozen=True)
class PointValues:
    """Loss (and accuracy, None when outputs are not class scores) at each point, and how they were evaluated."""

    loss: np.ndarray
    accuracy: np.ndarray | None
    method: str
    selection: dict[str, object] | None
    chunk_size: int


def _chunk_values(objective: Objective, thetas: Tensor, method: str,
                  with_accuracy: bool) -> tuple[Tensor, Tensor | None]:
    """The local weighted sums over this rank's batches of the loss and accuracy at each row of ``thetas``."""
    loss, acc = objective.evaluate(thetas, vectorize=method == "vmap", accuracy=with_accuracy, across_ranks=False)
    return loss.cpu(), None if acc is None else acc.cpu()


def _error_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"


def pick_method(objective: Objective, thetas: Tensor) -> tuple[str, dict[str, object]]:
    """Time ``vmap`` and ``loop`` on the rows of ``thetas`` and the first batch (after a warm-up
    call each); return the faster method that works and the record of the trial."""
    batch = objective.batches[0]
    seconds: dict[str, float] = {}
    failed: dict[str, str] = {}
    for method in ("vmap", "loop"):
        try:
            objective.evaluate_batch(thetas, batch, vectorize=method == "vmap")
            clock = Stopwatch(thetas.device)
            objective.evaluate_batch(thetas, batch, vectorize=method == "vmap")
            seconds[method] = clock.seconds() / thetas.shape[0]
        except (RuntimeError, NotImplementedError) as err:  # CUDA out-of-memory included
            failed[method] = _error_line(err)
    if not seconds:
        raise ObjectiveError(f"the model cannot be evaluated at the grid's points: {failed}")
    chosen = from_rank0(min(seconds, key=seconds.__getitem__))  # every rank uses rank 0's choice
    return chosen, {"trial_points": int(thetas.shape[0]), "trial_seconds_per_point": seconds, "failed": failed,
                    "chosen": chosen}


def evaluate_points(objective: Objective, center: Tensor, directions: Tensor, coords: np.ndarray, *,
                    chunk_size: int = 16, method: Method = "auto", accuracy: bool = True,
                    precision: ProductPrecision = "strict", progress: GridProgress | None = None) -> PointValues:
    """Loss and accuracy of ``objective`` at ``center + coords[p] @ directions`` for every row of ``coords``.

    Args:
        center: flat parameters ``(dim,)``; directions: ``(k, dim)``; coords: ``(P, k)``.
        chunk_size: points evaluated together (memory: ``chunk_size`` parameter vectors and the
            activations of one batch for each).
        method: ``"vmap"``, ``"loop"`` or ``"auto"`` (see the module docstring).
        accuracy: also the accuracy (arg-max of the outputs against the labels).
        precision: the forward passes' arithmetic, as for the curvature operators
            (:func:`~sharpscope.curvature.operators.precision.product_precision`): ``"strict"`` IEEE
            float32, ``"tf32"`` or ``"bf16"``.
        progress: ``progress(done, total)`` after every chunk.
    Non-finite losses far from the center are returned as they are.
    """
    check_choice("method", method, get_args(Method))
    check_int("chunk_size", chunk_size, low=1)
    resolve_precision(precision, objective.dtype)
    coords_t = torch.as_tensor(np.asarray(coords, dtype=np.float64))
    if coords_t.ndim != 2 or coords_t.shape[1] != directions.shape[0]:
        raise ConfigError(f"coords must have shape (P, {directions.shape[0]}), got {tuple(coords_t.shape)}")
    total = coords_t.shape[0]
    loss = torch.zeros(total, dtype=torch.float64)
    acc: Tensor | None = torch.zeros(total, dtype=torch.float64) if accuracy else None
    chosen: str = method
    selection: dict[str, object] | None = None
    start = 0
    with torch.no_grad(), objective.mode(), product_precision(precision, center.device):
        if method == "auto":
            trial = coords_t[:min(chunk_size, 4)].to(device=center.device, dtype=center.dtype)
            chosen, selection = pick_method(objective, center + trial @ directions)
        while start < total:
            stop = min(start + chunk_size, total)
            thetas = center + coords_t[start:stop].to(device=center.device, dtype=center.dtype) @ directions
            try:
                chunk_loss, chunk_acc = _chunk_values(objective, thetas, chosen, acc is not None)
            except torch.cuda.OutOfMemoryError:
                if chunk_size == 1:
                    raise ObjectiveError("out of GPU memory evaluating one point; split the probe set into smaller "
                                         "batches (batch_size=...)") from None
                del thetas
                torch.cuda.empty_cache()
                chunk_size = max(1, chunk_size // 2)
                continue
            except (RuntimeError, NotImplementedError) as err:
                if chosen != "vmap":
                    raise
                raise ObjectiveError(f"the model cannot be evaluated under torch.vmap ({_error_line(err)}); use "
                                     "method='loop' or 'auto'") from None
            loss[start:stop] = chunk_loss
            if chunk_acc is None:
                acc = None
            elif acc is not None:
                acc[start:stop] = chunk_acc
            start = stop
            if progress is not None:
                progress(start, total)
    loss = sum_across_ranks(loss.to(center.device)).cpu()
    if acc is not None:
        acc = sum_across_ranks(acc.to(center.device)).cpu()
    return PointValues(loss.numpy(), None if acc is None else acc.numpy(), chosen, selection, chunk_size)
