"""Checkpoints (with their model spec), atomic file writes and SHA-256 manifests of written files."""

from sharpscope.io import checksums
from sharpscope.io.atomic import atomic_write, atomic_write_bytes
from sharpscope.io.checkpoints import (
    FORMAT,
    LoadedCheckpoint,
    RawCheckpoint,
    fit_state_dict,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)

__all__ = [
    "FORMAT",
    "LoadedCheckpoint",
    "RawCheckpoint",
    "atomic_write",
    "atomic_write_bytes",
    "checksums",
    "fit_state_dict",
    "load_checkpoint",
    "read_checkpoint",
    "save_checkpoint",
]
