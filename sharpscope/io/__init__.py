"""Checkpoints (with their model spec), eigenvector files, atomic file writes, SHA-256 manifests of written
files, strict JSON and typed run records."""

from sharpscope.io import checksums
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
from sharpscope.io.records import Alignment, Measurement
from sharpscope.io.rundir import read_measurements

__all__ = [
    "Alignment",
    "EigenvectorFile",
    "Measurement",
    "FORMAT",
    "LoadedCheckpoint",
    "RawCheckpoint",
    "atomic_write",
    "atomic_write_bytes",
    "check_writable",
    "checksums",
    "fit_state_dict",
    "load_checkpoint",
    "load_eigenvectors",
    "read_checkpoint",
    "read_measurements",
    "save_checkpoint",
    "save_eigenvectors",
]
