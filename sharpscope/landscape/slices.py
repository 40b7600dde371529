"""1-D and 2-D slices of the loss landscape around the objective's parameters ``θ``.

    1-D:  L(θ + α d),               loss[i]    at alphas[i]
    2-D:  L(θ + α d₁ + β d₂),        loss[i, j] at (alphas[i], betas[j])

with ``L`` the objective's mean loss over its probe set (its batches, BatchNorm mode, dropout
off; see :mod:`sharpscope.landscape.grid`). A :class:`SliceResult` is data first: the coordinate
and value arrays, the directions' description, the loss at the center, settings, seconds and
the number of points evaluated. :meth:`SliceResult.save` writes ``stem.npz`` (arrays) and
``stem.json`` (everything else, strict JSON); figures are in :mod:`sharpscope.plots.landscape`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from sharpscope.curvature import Objective
from sharpscope.curvature.operators.precision import ProductPrecision, resolve_precision
from sharpscope.curvature.sampling import Stopwatch
from sharpscope.errors import ConfigError, DataError
from sharpscope.io import atomic_write, atomic_write_bytes, jsonsafe
from sharpscope.io.atomic import check_target
from sharpscope.landscape.directions import Directions, as_directions
from sharpscope.landscape.grid import GridProgress, Method, evaluate_points
from sharpscope.landscape.iterates import Source, expand_sources, parameter_vectors, project_path, source_names

FORMAT = "sharpscope-slice-1"
_ARRAYS = ("alphas", "betas", "loss", "accuracy", "path", "path_residuals")


@dataclass(frozen=True)
class SliceResult:
    """Loss (and accuracy) on a 1-D or 2-D grid of coordinates along known directions.

    ``loss`` has shape ``(len(alphas),)`` or ``(len(alphas), len(betas))``; ``accuracy`` likewise
    (None when the outputs are not class scores or it was not asked for). ``path`` holds the
    least-squares coordinates ``(n, 2)`` of a trajectory's iterates in the slice's directions, with
    their relative off-slice ``path_residuals`` and ``path_labels``. ``evaluations`` counts the
    parameter points evaluated (each a pass over the whole probe set), the center included.
    """

    alphas: np.ndarray
    betas: np.ndarray | None
    loss: np.ndarray
    accuracy: np.ndarray | None
    center_loss: float
    center_accuracy: float | None
    directions: dict[str, Any]
    settings: dict[str, Any]
    seconds: float
    evaluations: int
    path: np.ndarray | None = None
    path_residuals: np.ndarray | None = None
    path_labels: list[str] | None = None

    @property
    def dims(self) -> int:
        """1 for a line (``betas`` is None), 2 for a plane."""
        return 1 if self.betas is None else 2

    @property
    def loss_range(self) -> tuple[float, float] | None:
        """``(min, max)`` of the finite losses on the grid; None when none is finite."""
        finite = self.loss[np.isfinite(self.loss)]
        return (float(finite.min()), float(finite.max())) if finite.size else None

    def to_dict(self) -> dict[str, Any]:
        """Everything but the arrays, JSON-ready (the arrays' shapes are listed under ``arrays``)."""
        arrays = {name: list(getattr(self, name).shape) for name in _ARRAYS if getattr(self, name) is not None}
        low, high = self.loss_range or (None, None)
        return {"format": FORMAT, "dims": self.dims, "center_loss": self.center_loss,
                "center_accuracy": self.center_accuracy, "loss_min": low, "loss_max": high,
                "directions": self.directions, "settings": self.settings, "seconds": self.seconds,
                "evaluations": self.evaluations, "path_labels": self.path_labels,
                "arrays": arrays}

    def save(self, stem: str | os.PathLike[str]) -> tuple[Path, Path]:
        """Write ``stem.npz`` and ``stem.json`` atomically (a stem ending in ``.npz``/``.json`` is
        taken without it); return both paths."""
        npz_path, json_path = result_paths(stem)
        arrays = {name: getattr(self, name) for name in _ARRAYS if getattr(self, name) is not None}
        for path in (npz_path, json_path):  # both checked before the first is written
            check_target(path, "slice file")
        atomic_write(npz_path, lambda f: np.savez(f, **arrays))
        atomic_write_bytes(json_path, (jsonsafe.dumps(self.to_dict(), indent=1) + "\n").encode())
        return npz_path, json_path

    @classmethod
    def load(cls, stem: str | os.PathLike[str]) -> SliceResult:
        """Read a result written by :meth:`save`."""
        npz_path, json_path = result_paths(stem)
        try:
            record = jsonsafe.loads(json_path.read_text(encoding="utf-8"))
            with np.load(npz_path) as data:
                arrays = {name: data[name] for name in data.files}
        except FileNotFoundError as e:
            raise DataError(f"{e.filename}: no such slice file") from None
        except (ValueError, OSError) as e:
            raise DataError(f"{json_path.with_suffix('')}.{{json,npz}} is not a readable slice ({e})") from None
        if not isinstance(record, dict) or record.get("format") != FORMAT:
            raise DataError(f"{json_path} is not a slice record (format {FORMAT!r} expected)")
        missing = [name for name in ("alphas", "loss") if name not in arrays]
        if missing:
            raise DataError(f"{npz_path} lacks the arrays {missing}")
        return cls(alphas=arrays["alphas"], betas=arrays.get("betas"), loss=arrays["loss"],
                   accuracy=arrays.get("accuracy"), center_loss=jsonsafe.as_float(record["center_loss"]),
                   center_accuracy=record["center_accuracy"], directions=record["directions"],
                   settings=record["settings"], seconds=record["seconds"], evaluations=record["evaluations"],
                   path=arrays.get("path"), path_residuals=arrays.get("path_residuals"),
                   path_labels=record.get("path_labels"))


def result_paths(stem: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``(stem.npz, stem.json)``."""
    stem = Path(stem)
    if stem.suffix in (".npz", ".json"):
        stem = stem.with_suffix("")
    if not stem.name:
        raise ConfigError(f"slice stem {str(stem)!r} names no file")
    return stem.with_name(stem.name + ".npz"), stem.with_name(stem.name + ".json")


def coordinates(values: Sequence[float] | np.ndarray | Tensor, name: str) -> np.ndarray:
    """``values`` as a float64 array, checked: one-dimensional, non-empty, finite, strictly increasing."""
    try:
        arr = np.asarray(values.cpu() if isinstance(values, Tensor) else values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a sequence of numbers") from None
    if arr.ndim != 1 or arr.size == 0:
        raise ConfigError(f"{name} must be a non-empty one-dimensional sequence, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ConfigError(f"{name} contains NaN or infinite values")
    if arr.size > 1 and not (np.diff(arr) > 0).all():
        raise ConfigError(f"{name} must be strictly increasing")
    return arr


def _evaluate(objective: Objective, directions: Directions, axes: list[np.ndarray], *, chunk_size: int,
              method: Method, accuracy: bool, precision: ProductPrecision,
              progress: GridProgress | None) -> SliceResult:
    clock = Stopwatch(objective.device)
    center = objective.parameter_vector()
    mesh = np.meshgrid(*axes, indexing="ij")
    coords = np.concatenate([np.zeros((1, len(axes))), np.stack([m.reshape(-1) for m in mesh], axis=1)])
    values = evaluate_points(objective, center, directions.vectors, coords, chunk_size=chunk_size, method=method,
                             accuracy=accuracy, precision=precision, progress=progress)
    shape = tuple(len(a) for a in axes)
    acc = values.accuracy
    settings = {**objective.describe(), "method": values.method, "method_selection": values.selection,
                "chunk_size": values.chunk_size, "precision": precision, "points": int(coords.shape[0]),
                "forward_passes": int(coords.shape[0]) * len(objective.batches)}
    return SliceResult(alphas=axes[0], betas=axes[1] if len(axes) == 2 else None, loss=values.loss[1:].reshape(shape),
                       accuracy=None if acc is None else acc[1:].reshape(shape), center_loss=float(values.loss[0]),
                       center_accuracy=None if acc is None else float(acc[0]), directions=directions.description,
                       settings=settings, seconds=clock.seconds(), evaluations=int(coords.shape[0]))


def slice_1d(objective: Objective, direction: Directions | Tensor, alphas: Sequence[float] | np.ndarray | Tensor, *,
             chunk_size: int = 16, method: Method = "auto", accuracy: bool = True,
             precision: ProductPrecision = "strict", progress: GridProgress | None = None) -> SliceResult:
    """``L(θ + α d)`` for each ``α`` in ``alphas``; ``direction`` holds one direction (``(dim,)``,
    ``(1, dim)`` or a :class:`Directions` with ``k = 1``). See :func:`evaluate_points` for the options."""
    resolve_precision(precision, objective.dtype)
    d = as_directions(direction, objective)
    if d.k != 1:
        raise ConfigError(f"a 1-D slice needs one direction, got {d.k}")
    return _evaluate(objective, d, [coordinates(alphas, "alphas")], chunk_size=chunk_size, method=method,
                     accuracy=accuracy, precision=precision, progress=progress)


def slice_2d(objective: Objective, directions: Directions | Tensor, alphas: Sequence[float] | np.ndarray | Tensor,
             betas: Sequence[float] | np.ndarray | Tensor, *, path: Sequence[Source] | None = None,
             unsafe_load: bool = False, chunk_size: int = 16, method: Method = "auto", accuracy: bool = True,
             precision: ProductPrecision = "strict", progress: GridProgress | None = None) -> SliceResult:
    """``L(θ + α d₁ + β d₂)`` on the grid ``alphas × betas`` (``loss[i, j]`` at ``(alphas[i], betas[j])``).

    ``path``: a trajectory's iterates (checkpoint paths, folders of checkpoints, or flat vectors)
    projected onto the two directions by least squares and stored with the result.
    """
    resolve_precision(precision, objective.dtype)
    d = as_directions(directions, objective)
    if d.k != 2:
        raise ConfigError(f"a 2-D slice needs two directions, got {d.k}")
    axes = [coordinates(alphas, "alphas"), coordinates(betas, "betas")]
    projected = None
    if path is not None:
        points = parameter_vectors(objective, path, unsafe_load=unsafe_load)
        projected = project_path(d.vectors, objective.parameter_vector(), points)
    result = _evaluate(objective, d, axes, chunk_size=chunk_size, method=method, accuracy=accuracy,
                       precision=precision, progress=progress)
    if projected is None or path is None:  # a projection exists exactly when a path was given
        return result
    return replace(result, path=projected[0], path_residuals=projected[1],
                   path_labels=source_names(expand_sources(path)))
