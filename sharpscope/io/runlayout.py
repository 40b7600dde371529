"""A run directory's file names, and the rule a checkpoint inside one is verified by.

The layout and the run directory itself: :mod:`sharpscope.io.rundir`. The rule sits here, below both the run
directory and the checkpoint reader (:func:`~sharpscope.io.checkpoints.read_checkpoint`), so a checkpoint read
on its own is held to the rule its run holds it to: in a run written with checksums, a checkpoint whose
manifest is gone is ``"unrecorded"`` and is not loaded.
"""

from __future__ import annotations

import os
from pathlib import Path

from sharpscope.io import checksums, migrations, recordlines

CONFIG = "config.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CHECKPOINTS = "checkpoints"
MANIFEST = checksums.MANIFEST


def scan_metrics(run: Path) -> recordlines.Scan | None:
    """Every line of ``RUN/metrics.jsonl`` checked (:mod:`sharpscope.io.recordlines`; a file of format 0 read by
    :func:`~sharpscope.io.migrations.records_v0`), or None without the file."""
    try:
        return migrations.records_v0(recordlines.scan((run / METRICS).read_bytes()))
    except FileNotFoundError:
        return None


def written_with_checksums(run: Path) -> bool:
    """Whether run ``run`` was written with checksums (a ``SHA256SUMS`` beside its files, or records that carry
    them): then every checkpoint must be recorded in ``checkpoints/SHA256SUMS``."""
    if (run / MANIFEST).is_file() or (run / CHECKPOINTS / MANIFEST).is_file():
        return True
    scan = scan_metrics(run)
    return scan is not None and scan.checked


def run_of_checkpoint(path: str | os.PathLike[str]) -> Path | None:
    """The run directory that holds checkpoint ``path`` (``RUN/checkpoints/NAME`` beside ``RUN/config.json``), or
    None for a checkpoint elsewhere."""
    folder = Path(path).expanduser().absolute().parent
    return folder.parent if folder.name == CHECKPOINTS and (folder.parent / CONFIG).is_file() else None


def verify_checkpoint(path: str | os.PathLike[str], run: Path | None) -> checksums.Verdict:
    """:func:`sharpscope.io.checksums.verify` of checkpoint ``path`` of run ``run`` (None: of no run), except that
    in a run written with checksums a missing ``checkpoints/SHA256SUMS`` reads ``"unrecorded"``: nothing is
    loaded unchecked."""
    verdict = checksums.verify(path)
    return "unrecorded" if verdict == "no-manifest" and run is not None and written_with_checksums(run) else verdict
