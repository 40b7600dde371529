"""Iterates of a run as flat parameter vectors, and their coordinates in a slice's directions.

An iterate is a checkpoint file (a folder stands for its checkpoint files, sorted by name) or a
flat parameter vector in the objective's layout. A checkpoint is loaded into a copy of the
objective's model (with the usual key and shape checks of :func:`sharpscope.io.fit_state_dict`)
and its values of the objective's parameters are read off; its buffers are not used.

The projected path of a trajectory onto directions ``D`` (rows ``d_j``, not necessarily
orthogonal) is, for each iterate, the least-squares coordinates

    c_i = argmin_c ‖θ_i − θ − Dᵀ c‖ = (D Dᵀ)⁻¹ D (θ_i − θ),

with the relative residual ``‖θ_i − θ − Dᵀ c_i‖ / ‖θ_i − θ‖`` saying how far the iterate lies off
the slice.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from sharpscope.curvature import Objective
from sharpscope.errors import CheckpointError, ConfigError
from sharpscope.io import fit_state_dict, read_checkpoint

Source = str | os.PathLike[str] | Tensor
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".ckpt")


def expand_sources(sources: Sequence[Source]) -> list[Source]:
    """``sources`` with every folder replaced by its checkpoint files, sorted by name."""
    if isinstance(sources, (str, os.PathLike, Tensor)):
        raise ConfigError("iterates must be a sequence of checkpoint paths or vectors, not a single one")
    out: list[Source] = []
    for s in sources:
        if isinstance(s, (str, os.PathLike)) and Path(s).is_dir():
            files = sorted(p for p in Path(s).iterdir() if p.suffix.lower() in CHECKPOINT_SUFFIXES)
            if not files:
                raise CheckpointError(f"{s}: the folder holds no checkpoint files ({', '.join(CHECKPOINT_SUFFIXES)})")
            out.extend(files)
        elif isinstance(s, (str, os.PathLike, Tensor)):
            out.append(s)
        else:
            raise ConfigError(f"an iterate must be a checkpoint path or a parameter vector, got {type(s).__name__}")
    return out


def source_names(sources: Sequence[Source]) -> list[str]:
    """Printable names: the path of each checkpoint, ``vector[i]`` for a tensor."""
    return [f"vector[{i}]" if isinstance(s, Tensor) else os.fspath(s) for i, s in enumerate(sources)]


def parameter_vectors(objective: Objective, sources: Sequence[Source], *, unsafe_load: bool = False) -> list[Tensor]:
    """The objective's parameters at each source (see :func:`expand_sources`), as flat vectors on its
    device and dtype."""
    vectors: list[Tensor] = []
    clone = None
    for source in expand_sources(sources):
        if isinstance(source, Tensor):
            if source.shape != (objective.dim,):
                raise ConfigError(f"a parameter vector must have shape ({objective.dim},), got {tuple(source.shape)}")
            v = source.detach().to(device=objective.device, dtype=objective.dtype)
        else:
            raw = read_checkpoint(source, unsafe_load=unsafe_load)
            if clone is None:
                clone = copy.deepcopy(objective.model)
            fit_state_dict(clone, raw.state_dict, source=os.fspath(source))
            params = dict(clone.named_parameters())
            v = objective.flatten(params[n].detach() for n in objective.names).to(objective.device, objective.dtype)
        if not torch.isfinite(v).all():
            raise CheckpointError(f"{source_names([source])[0]}: parameters contain NaN or infinite values")
        vectors.append(v.clone())
    if not vectors:
        raise ConfigError("no iterates given")
    return vectors


def project_path(directions: Tensor, center: Tensor, points: Sequence[Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares coordinates ``(n, k)`` of ``points`` in the basis ``directions`` ``(k, dim)``
    around ``center``, and each point's relative residual ``(n,)`` (0 for a point in the slice)."""
    D = directions.double()
    R = torch.stack([p.double() for p in points]) - center.double()
    gram = D @ D.T
    if torch.linalg.matrix_rank(gram) < D.shape[0]:
        raise ConfigError("the directions are linearly dependent: a path cannot be projected onto them")
    coords = torch.linalg.solve(gram, D @ R.T).T
    lengths = R.norm(dim=1)
    off = (R - coords @ D).norm(dim=1)
    residuals = torch.where(lengths > 0, off / lengths.clamp_min(torch.finfo(torch.float64).tiny), 0.0)
    return coords.cpu().numpy(), residuals.cpu().numpy()


def covering_grid(values: np.ndarray, num: int, margin: float = 0.25) -> np.ndarray:
    """``num`` evenly spaced points covering ``values`` and 0, widened by ``margin`` times the span
    on each side (the default grid around a projected path)."""
    if num < 2:
        raise ConfigError(f"a grid needs at least 2 points, got {num}")
    lo, hi = min(float(np.min(values)), 0.0), max(float(np.max(values)), 0.0)
    span = hi - lo if hi > lo else 1.0
    return np.linspace(lo - margin * span, hi + margin * span, num)
