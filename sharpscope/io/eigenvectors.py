"""Eigenvectors of a curvature operator in a ``.safetensors`` file.

The file holds ``eigenvectors`` ``(dim, k)`` (column ``i`` is the unit eigenvector of
``eigenvalues[i]``) and ``eigenvalues`` ``(k,)``, in the dtype they were computed in, plus string
metadata: ``format`` (``sharpscope-eigenvectors``), ``names`` and ``shapes`` (JSON lists: how the
flat parameter vector splits into the model's parameters, in order) and ``settings`` (JSON: how the
eigenvectors were computed). :func:`load_eigenvectors` reads it back and splits the vectors per
parameter.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sharpscope.errors import CheckpointError, ConfigError
from sharpscope.io.atomic import atomic_write

FORMAT = "sharpscope-eigenvectors"


@dataclass(frozen=True)
class EigenvectorFile:
    """What an eigenvector file holds (see the module docstring)."""

    eigenvalues: Tensor
    eigenvectors: Tensor
    names: list[str]
    shapes: list[list[int]]
    settings: dict[str, Any] = field(default_factory=dict)

    def per_parameter(self, i: int = 0) -> dict[str, Tensor]:
        """Eigenvector ``i`` split into the model's parameters (views, by name)."""
        parts = torch.split(self.eigenvectors[:, i], [math.prod(s) for s in self.shapes])
        return {n: t.reshape(s) for n, t, s in zip(self.names, parts, self.shapes)}


def save_eigenvectors(path: str | os.PathLike[str], eigenvalues: Tensor, eigenvectors: Tensor, *,
                      names: Sequence[str], shapes: Sequence[Sequence[int]],
                      settings: Mapping[str, Any] | None = None) -> Path:
    """Write an eigenvector file atomically; ``names``/``shapes`` describe the flat vector's layout."""
    from safetensors.torch import save as st_save

    if eigenvectors.ndim != 2 or eigenvalues.shape != (eigenvectors.shape[1],):
        raise ConfigError(f"need eigenvectors (dim, k) and eigenvalues (k,), got {tuple(eigenvectors.shape)} "
                          f"and {tuple(eigenvalues.shape)}")
    if len(names) != len(shapes) or sum(math.prod(s) for s in shapes) != eigenvectors.shape[0]:
        raise ConfigError(f"parameter layout ({len(names)} names, {sum(math.prod(s) for s in shapes)} entries) "
                          f"does not fit eigenvectors of dimension {eigenvectors.shape[0]}")
    from sharpscope.io import jsonsafe

    meta = {"format": FORMAT, "names": json.dumps(list(names)), "shapes": json.dumps([list(s) for s in shapes]),
            "settings": jsonsafe.dumps(dict(settings or {}))}
    tensors = {"eigenvalues": eigenvalues.detach().cpu().contiguous(),
               "eigenvectors": eigenvectors.detach().cpu().contiguous()}
    blob = st_save(tensors, metadata=meta)
    return atomic_write(path, lambda f: f.write(blob))


def load_eigenvectors(path: str | os.PathLike[str]) -> EigenvectorFile:
    """Read a file written by :func:`save_eigenvectors`."""
    from safetensors import SafetensorError, safe_open

    from sharpscope.io import jsonsafe

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise CheckpointError(f"{path} is not a sharpscope eigenvector file (format {meta.get('format')!r})")
            values, vectors = f.get_tensor("eigenvalues"), f.get_tensor("eigenvectors")
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except SafetensorError as e:
        raise CheckpointError(f"{path} is not a readable .safetensors file ({e})") from None
    return EigenvectorFile(values, vectors, json.loads(meta["names"]), json.loads(meta["shapes"]),
                           jsonsafe.loads(meta["settings"]))
