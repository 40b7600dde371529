"""One loss-landscape slice around a model, from a validated :class:`SliceSettings`.

This is the library function behind ``sharpscope landscape``: it chooses the directions
(:mod:`~sharpscope.landscape.directions`), the grid and the slice's dimension, and evaluates

    1-D:  L(θ + α d),              α over ``alphas``
    2-D:  L(θ + α d₁ + β d₂),      (α, β) over ``alphas × betas``

with ``L`` the mean loss over ``(x, y)`` at the model's parameters ``θ``. A grid axis is given as
``(start, stop, num)``: ``num`` evenly spaced values from ``start`` to ``stop``, both included.
Without one, an axis is ``(-1, 1, 21)``; ``(-0.5, 1.5, 21)`` for the line to another checkpoint
(``t = 0`` the model, ``t = 1`` the other); for principal directions, 21 points covering the
iterates' projected path and the center (:func:`~sharpscope.landscape.iterates.covering_grid`).
Every automatic choice is recorded under ``settings["slice"]`` in the result.

    >>> import torch
    >>> from sharpscope.landscape import SliceSettings, slice_around
    >>> model = torch.nn.Linear(3, 2)
    >>> x, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
    >>> result = slice_around(model, x, y, SliceSettings(alphas=(-1.0, 1.0, 5), betas=(-1.0, 1.0, 3)))
    >>> result.loss.shape, result.settings["slice"]["dims"]
    ((5, 3), 2)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

import numpy as np
import torch
from torch import Tensor, nn

from sharpscope.curvature import Objective
from sharpscope.curvature.operators.objective import BNMode
from sharpscope.curvature.operators.precision import PRECISIONS, ProductPrecision, resolve_precision
from sharpscope.errors import ConfigError
from sharpscope.landscape.directions import (
    Directions,
    Normalization,
    eigen_directions,
    interpolation_direction,
    pca_directions,
    random_directions,
)
from sharpscope.landscape.grid import GridProgress, Method, check_grid_memory
from sharpscope.landscape.iterates import Source, covering_grid
from sharpscope.landscape.slices import SliceResult, slice_1d, slice_2d
from sharpscope.losses import LOSSES, get_loss
from sharpscope.models.registry import DTYPES, MODEL_DTYPES, ModelDtype
from sharpscope.validation import check_bool, check_choice, check_int, check_seed, check_tol

DirectionKind = Literal["random", "eig", "pca", "interp"]
Axis = tuple[float, float, int]
DIRECTION_KINDS: tuple[str, ...] = get_args(DirectionKind)
DEFAULT_POINTS = 21  # points on an axis the settings leave to the slice


def _axis(argument: str, value: Any) -> Axis | None:
    """``(start, stop, num)`` as floats and an int, checked: finite ``start < stop`` and ``num >= 2``."""
    if value is None:
        return None
    try:
        start, stop, num = value
        ok = (not isinstance(num, bool) and int(num) == num and num >= 2 and np.isfinite(start)
              and np.isfinite(stop) and start < stop)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ConfigError(argument=argument, message=f"{argument} must be (start, stop, num) with finite start < stop and num >= 2, "
                                 f"got {value!r}")
    return float(start), float(stop), int(num)


@dataclass(frozen=True)
class SliceSettings:
    """Which slice to take and how; validated on construction, recorded with the result.

    ``directions``: ``random`` (filter- or layer-normalised Gaussian, ``normalization``,
    ``include_bn_bias``), ``eig`` (top Hessian eigenvectors by Lanczos to ``tol``, ``max_iter``),
    ``pca`` (principal directions of a run's iterates) or ``interp`` (the line to another
    checkpoint; 1-D). ``dims``: 1 or 2 (None: 1 for ``interp``, else 2). ``alphas``/``betas``:
    ``(start, stop, num)`` axes (None: the defaults of the module docstring). ``loss``: a loss
    registered in :data:`sharpscope.losses.LOSSES`. ``device``/``dtype``: where to evaluate and the
    model's dtype there (None: the model's own). ``batch_size``, ``chunk_size``, ``method`` and
    ``precision`` (the products' arithmetic, :data:`~sharpscope.curvature.operators.precision.PRECISIONS`)
    are the memory and speed options of :func:`~sharpscope.landscape.slice_2d`;
    ``seed`` seeds the random directions and Lanczos.
    """

    directions: DirectionKind = "random"
    dims: int | None = None
    alphas: Axis | None = None
    betas: Axis | None = None
    normalization: Normalization = "filter"
    include_bn_bias: bool = False
    loss: str = "ce"
    bn: BNMode = "eval"
    batch_size: int | None = 1000
    chunk_size: int = 16
    method: Method = "auto"
    tol: float = 1e-3
    max_iter: int | None = None
    device: str | None = None
    dtype: ModelDtype | None = None
    precision: ProductPrecision = "strict"
    seed: int = 0

    def __post_init__(self) -> None:
        check_choice("directions", self.directions, DIRECTION_KINDS)
        if self.dims is not None and (isinstance(self.dims, bool) or self.dims not in (1, 2)):
            raise ConfigError(argument="dims", message=f"dims must be 1 or 2, got {self.dims!r}")
        if self.directions == "interp" and self.slice_dims != 1:
            raise ConfigError(argument="dims", message="directions 'interp' (the line to another checkpoint) is 1-D: dims must be 1")
        for name in ("alphas", "betas"):
            object.__setattr__(self, name, _axis(name, getattr(self, name)))
        if self.slice_dims == 1 and self.betas is not None:
            raise ConfigError(argument="betas", message="betas is the second axis of a 2-D slice; this slice is 1-D (dims 1)")
        check_choice("normalization", self.normalization, get_args(Normalization))
        check_choice("loss", self.loss, tuple(LOSSES))
        check_choice("bn", self.bn, get_args(BNMode))
        check_choice("method", self.method, get_args(Method))
        check_choice("precision", self.precision, PRECISIONS)
        if self.dtype is not None:
            check_choice("dtype", self.dtype, MODEL_DTYPES)
            resolve_precision(self.precision, DTYPES[self.dtype])
        check_bool("include_bn_bias", self.include_bn_bias)
        if self.device is not None and not isinstance(self.device, str):
            raise ConfigError(argument="device", message=f"device must be a name such as 'cpu', 'cuda:0' or 'auto', got {self.device!r}")
        check_int("batch_size", self.batch_size, low=1, optional=True)
        check_int("chunk_size", self.chunk_size, low=1)
        check_int("max_iter", self.max_iter, low=1, optional=True)
        check_tol("tol", self.tol)
        check_seed("seed", self.seed)
        check_grid_memory([DEFAULT_POINTS if axis is None else axis[2] for axis in self.axes()])

    @property
    def slice_dims(self) -> int:
        """``dims``, or its default: 1 for ``interp``, else 2."""
        return self.dims if self.dims is not None else (1 if self.directions == "interp" else 2)

    def axes(self) -> list[Axis | None]:
        """The given axes of the slice, one per dimension (None: chosen by the slice)."""
        return [self.alphas, self.betas][:self.slice_dims]


def check_sources(settings: SliceSettings, other: Source | None, iterates: Sequence[Source] | None) -> None:
    """Refuse a checkpoint argument the settings' directions cannot use, or one they need and lack."""
    kind = settings.directions
    if kind == "interp" and other is None:
        raise ConfigError(argument="other", message="directions 'interp' needs other, the checkpoint at t = 1")
    if kind != "interp" and other is not None:
        raise ConfigError(argument="other", message=f"other (the checkpoint at t = 1) is for directions 'interp', not {kind!r}")
    if kind == "pca" and not iterates:
        raise ConfigError(argument="iterates", message="directions 'pca' needs iterates, the run's checkpoints (or folders of them)")
    if iterates and settings.slice_dims == 1 and kind != "pca":
        raise ConfigError(argument="iterates", message="iterates: their path is drawn on 2-D slices only (a 1-D slice takes them for "
                                   "directions 'pca' only)")


def choose_directions(objective: Objective, settings: SliceSettings, other: Source | None,
                      iterates: Sequence[Source], unsafe_load: bool) -> Directions:
    """The settings' directions at the objective's parameters."""
    dims, kind = settings.slice_dims, settings.directions
    if kind == "eig":
        return eigen_directions(objective, dims, tol=settings.tol, max_iter=settings.max_iter, seed=settings.seed,
                                precision=settings.precision)
    if kind == "random":
        return random_directions(objective, dims, seed=settings.seed, normalization=settings.normalization,
                                 include_bn_and_bias=settings.include_bn_bias)
    if kind == "pca":
        return pca_directions(objective, iterates, dims, unsafe_load=unsafe_load)
    assert other is not None  # check_sources
    return interpolation_direction(objective, other, unsafe_load=unsafe_load)


def axis_values(settings: SliceSettings, directions: Directions, j: int) -> tuple[np.ndarray, str]:
    """The values on axis ``j`` and how they were chosen (``given`` or the default's rule)."""
    given = settings.axes()[j]
    if given is not None:
        return np.linspace(*given), "given"
    if settings.directions == "pca":
        path = np.asarray(directions.description["coordinates"])[:, j]
        return covering_grid(path, DEFAULT_POINTS), f"default: {DEFAULT_POINTS} points covering the path"
    start, stop = (-0.5, 1.5) if settings.directions == "interp" else (-1.0, 1.0)
    return np.linspace(start, stop, DEFAULT_POINTS), f"default: {start}:{stop}:{DEFAULT_POINTS}"


def _placed(model: nn.Module, x: Tensor, y: Tensor, settings: SliceSettings) -> tuple[nn.Module, Tensor, Tensor]:
    """The model cast in place (``Module.to``) to the settings' device and dtype, and the data on that device."""
    if settings.device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    else:
        from sharpscope.parallel import resolve_device

        device = resolve_device(settings.device)
    model = model.to(device=device, dtype=None if settings.dtype is None else DTYPES[settings.dtype])
    return model, x.to(device), y.to(device)


def slice_around(model: nn.Module, x: Tensor, y: Tensor, settings: SliceSettings = SliceSettings(), *,
                 other: Source | None = None, iterates: Sequence[Source] | None = None, unsafe_load: bool = False,
                 progress: GridProgress | None = None) -> SliceResult:
    """The loss (and accuracy) on a 1-D or 2-D slice through the model's parameters (see the module docstring).

    ``other``: the checkpoint (or flat parameter vector) at ``t = 1`` for ``directions="interp"``.
    ``iterates``: a run's checkpoints (folders stand for their checkpoint files, sorted by name);
    for ``pca`` they give the directions, and on any 2-D slice their projected path is stored
    with the result. The model is cast in place to ``settings.device``/``settings.dtype`` when
    they are given. ``progress(done, total)`` after every chunk of grid points.
    """
    check_sources(settings, other, iterates)
    model, x, y = _placed(model, x, y, settings)
    objective = Objective(model, get_loss(settings.loss), (x, y), bn=settings.bn, batch_size=settings.batch_size)
    resolve_precision(settings.precision, objective.dtype)  # a float64 model's own dtype refuses bf16 here
    directions = choose_directions(objective, settings, other, list(iterates or []), unsafe_load)
    axes = [axis_values(settings, directions, j) for j in range(settings.slice_dims)]
    options: dict[str, Any] = dict(chunk_size=settings.chunk_size, method=settings.method,
                                   precision=settings.precision, progress=progress)
    if settings.slice_dims == 1:
        result = slice_1d(objective, directions, axes[0][0], **options)
    else:
        result = slice_2d(objective, directions, axes[0][0], axes[1][0], path=list(iterates) if iterates else None,
                          unsafe_load=unsafe_load, **options)
    chosen = {"dims": settings.slice_dims, "dims_default": settings.dims is None, "axes": [how for _, how in axes]}
    result.settings.update({"loss_fn": settings.loss, "seed": settings.seed,
                            "slice": {**asdict(settings), **chosen}})
    return result
