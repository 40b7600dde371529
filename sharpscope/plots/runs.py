"""Run directories as plain data for figures: the records of one run and series pulled out of them.

:func:`load_run` reads ``config.json``, ``metrics.jsonl`` and ``summary.json`` through
:class:`~sharpscope.track.RunDirectory` as the typed records of :mod:`sharpscope.io.records` (the stored
non-finite strings ``"NaN"``, ``"Infinity"`` decoded back into floats). :func:`series` turns a dotted key
into two aligned arrays:

    >>> import tempfile
    >>> from sharpscope.io.rundir import RunDirectory
    >>> folder = RunDirectory(tempfile.mkdtemp() + "/run")
    >>> folder.create({"model": {"name": "mlp"}})     # a new run (a resumed one would say so)
    'new'
    >>> for step, lam in ((0, 1.5), (10, "NaN"), (20, 2.5)):
    ...     _ = folder.append_metric({"kind": "measurement", "step": step, "eigenvalues": [lam],
    ...                               "thresholds": {"edge": 2.0}})
    >>> run = load_run(folder.path)
    >>> steps, lam = series(run, "eigenvalues.0")        # λ_max at every measurement
    >>> steps.tolist(), lam.tolist()
    ([0, 10, 20], [1.5, nan, 2.5])
    >>> steps, edge = series(run, "thresholds.edge")     # the optimizer's threshold (2/η, SAM-edge, ...)

A record without the value (no trace measured, a failed Lanczos run, a list that is too short)
gives NaN at its step, so lines show a gap there instead of failing.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sharpscope.errors import ConfigError, DataError, SharpscopeError
from sharpscope.io.jsonsafe import decode
from sharpscope.io.records import (
    Divergence,
    Measurement,
    RunRecord,
    RunSummary,
    is_measurement,
    number_at,
    record_kind,
    record_step,
    stored_record,
    typed_record,
)
from sharpscope.io.rundir import RunDirectory
from sharpscope.io.runlayout import CONFIG, METRICS

#: A record other than a measurement: typed for the kinds sharpscope writes, the decoded JSON for any other.
Event = RunRecord | dict[str, Any]


@dataclass(frozen=True)
class RunData:
    """One run directory, read: its config, its :class:`~sharpscope.io.records.Measurement` records in
    step order, its other records (``events``: a :class:`~sharpscope.io.records.Divergence`, ...), its
    :class:`~sharpscope.io.records.RunSummary` (None while the run is unfinished) and the label figures give it."""

    path: Path
    config: dict[str, Any]
    measurements: list[Measurement]
    events: list[Event]
    summary: RunSummary | None
    label: str

    @property
    def diverged_at(self) -> int | None:
        """The step at which the training loss became non-finite, or None."""
        for event in self.events:
            if isinstance(event, Divergence):
                return event.step
        return None


RunLike = RunData | str | os.PathLike


def load_run(path: str | os.PathLike[str], label: str | None = None) -> RunData:
    """Read the run directory ``path`` (``label`` defaults to the folder name).

    Any folder sharpscope writes records to is a run directory: one from :func:`sharpscope.track.train`
    (``config.json``, ``metrics.jsonl``, ...) or one that a :class:`~sharpscope.track.SharpnessTracker`
    in a loop of your own fills through a ``RunDirectory``/``JSONLSink`` sink (``metrics.jsonl`` alone:
    its config is then ``{}``). A last ``metrics.jsonl`` line torn by a kill is skipped, so a running or
    killed run can be plotted. Raises :class:`~sharpscope.errors.ConfigError` when ``path`` holds neither file.
    """
    run = RunDirectory(path)
    if not run.path.is_dir():
        what = "a file" if run.path.exists() else "no such folder"
        raise ConfigError(f"{run.path} is not a sharpscope run directory ({what})")
    if not run.config_path.is_file() and not run.metrics_path.is_file():
        if (run.path / "slice.json").is_file():
            raise ConfigError(f"{run.path} holds a loss-landscape slice (slice.json), not a run's records: sharpscope "
                              "landscape draws its figures (line, contour, surface) with --figures")
        raise ConfigError(f"{run.path} is not a sharpscope run directory: no metrics.jsonl and no config.json "
                          "(sharpscope train writes both; a SharpnessTracker writes metrics.jsonl through a "
                          "RunDirectory or JSONLSink sink)")
    try:
        config = run.read_config() if run.config_path.is_file() else {}
        summary = run.read_summary()
    except SharpscopeError:
        raise
    except ValueError as e:  # a config.json or summary.json that is not strict JSON
        raise ConfigError(f"{run.path}: unreadable run file ({e})") from None
    records = run.read_metrics(torn_ok=True)
    measurements = sorted((Measurement.from_json(r) for r in records if is_measurement(r)), key=lambda m: m.step)
    events: list[Event] = [typed_record(r) or decode(r) for r in records if not is_measurement(r)]
    name = label if label is not None else (run.path.resolve().name or str(run.path))
    return RunData(path=run.path, config=config, measurements=measurements, events=events,
                   summary=None if summary is None else RunSummary.from_json(summary), label=name)


def is_run_directory(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a folder holding a run's ``metrics.jsonl`` or ``config.json``."""
    folder = Path(path)
    return folder.is_dir() and any((folder / name).is_file() for name in (METRICS, CONFIG))


def expand_runs(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """``paths`` with each folder of run directories (a ``sharpscope reproduce`` study folder: one run
    per stage) replaced by those runs, in name order; other paths are kept as they are."""
    out: list[Path] = []
    for path in map(Path, paths):
        inner = sorted(p for p in path.iterdir() if is_run_directory(p)) if path.is_dir() else []
        out.extend(inner if inner and not is_run_directory(path) else [path])
    return out


def as_runs(runs: RunLike | Sequence[RunLike], labels: Sequence[str] | None = None) -> list[RunData]:
    """``runs`` (run data or run-directory paths, one or several) as a list of :class:`RunData`,
    relabelled with ``labels`` when given (a single string labels a single run). Raises
    :class:`DataError` for no runs or a run without measurements, :class:`ConfigError` for a label
    count that does not match."""
    items = [runs] if isinstance(runs, (RunData, str, os.PathLike)) else list(runs)
    if isinstance(labels, str):
        labels = [labels]
    if not items:
        raise DataError("no runs to plot")
    if labels is not None and len(labels) != len(items):
        raise ConfigError(f"{len(labels)} label(s) for {len(items)} run(s); give one label per run")
    out = []
    for i, item in enumerate(items):
        run = item if isinstance(item, RunData) else load_run(item)
        if labels is not None:
            run = dataclasses.replace(run, label=str(labels[i]))
        if not run.measurements:
            raise DataError(f"{run.path}: no measurements recorded (metrics.jsonl is empty or missing)")
        out.append(run)
    return out


def value(record: RunRecord | Mapping[str, Any], key: str) -> float:
    """The number at dotted ``key`` in ``record``'s stored form (list entries by index: ``"eigenvalues.1"``), or
    NaN when any part is missing or is not a number (:func:`sharpscope.io.records.number_at`)."""
    return number_at(stored_record(record), key)


def series(run: RunData, key: str) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, values)`` of dotted ``key`` over the run's measurements (missing values are NaN).

    Keys: ``"eigenvalues.0"`` (λ_max), ``"residuals.0"``, ``"trace.estimate"``, ``"trace.stderr"``,
    ``"grad_norm"``, ``"train_loss"``, ``"train_acc"``, ``"test_loss"``, ``"test_acc"``,
    ``"thresholds.edge"``, ``"thresholds.gd_edge"``, ``"cost.hvps"``, ...
    """
    steps = np.array([m.step for m in run.measurements], dtype=np.int64)
    values = np.array([value(m, key) for m in run.measurements], dtype=np.float64)
    return steps, values


def event_series(run: RunData, kind: str, key: str) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, values)`` of dotted ``key`` over the run's records of ``kind`` (e.g. ``"update_curvature"``,
    ``"kappa"``), in step order; missing values are NaN."""
    records = sorted((r for r in run.events if record_kind(r) == kind), key=record_step)
    steps = np.array([record_step(r) for r in records], dtype=np.int64)
    return steps, np.array([value(r, key) for r in records], dtype=np.float64)


def has_values(runs: Sequence[RunData], key: str) -> bool:
    """Whether any measurement of any run holds a finite number at ``key``."""
    return any(math.isfinite(value(r, key)) for run in runs for r in run.measurements)
