"""Checkpoints (with their model spec), eigenvector files and atomic file writes."""

from sharpscope.io.atomic import atomic_write, atomic_write_bytes, check_writable
from sharpscope.io.checkpoints import (
    FORMAT,
    LoadedCheckpoint,
    RawCheckpoint,
    fit_state_dict,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from sharpscope.io.eigenvectors import EigenvectorFile, load_eigenvectors, save_eigenvectors

__all__ = [
    "EigenvectorFile",
    "FORMAT",
    "LoadedCheckpoint",
    "RawCheckpoint",
    "atomic_write",
    "atomic_write_bytes",
    "check_writable",
    "fit_state_dict",
    "load_checkpoint",
    "load_eigenvectors",
    "read_checkpoint",
    "save_checkpoint",
    "save_eigenvectors",
]
