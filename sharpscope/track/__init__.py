"""Tracking sharpness along training: a tracker callback, a resumable runner, the run directory.

* :class:`SharpnessTracker` — every ``k`` steps of any loop: top eigenvalues (warm-started
  Lanczos), trace, ‖∇L‖, the matching stability threshold, train/test loss and accuracy, and
  the cost of each measurement.
* :func:`train` with a :class:`TrainConfig` — full-batch GD (gradient accumulation over fixed
  batches) or mini-batch training with ``gd``/``sgd``/``sam``/``adam``/``adamw``, into a run
  directory; a killed run resumes from its last checkpoint with every record written exactly once.
  :mod:`~sharpscope.track.config` holds the config (its curvature settings nested as
  ``curvature``), :mod:`~sharpscope.track.build` builds its data, model, optimizer and tracker, and
  :mod:`~sharpscope.track.runner` runs the loop.
* sinks (:mod:`sharpscope.track.sinks`) — where records go: :class:`JSONLSink`, :class:`CSVSink`,
  :class:`TensorBoardSink`, :class:`WandbSink`, several at once with :class:`MultiSink`;
  :func:`metrics_dataframe` reads a run's records back as a pandas DataFrame. A training run sends its
  records to them through ``TrainConfig.log`` (``tensorboard:DIR``, ``csv:PATH``, ``wandb:PROJECT``;
  :mod:`~sharpscope.track.logs`), each step once across resumes; TensorBoard and W&B chart names are
  in :mod:`~sharpscope.track.tags`.
* :class:`RunDirectory` (defined in :mod:`sharpscope.io.rundir`) — ``config.json``, ``metrics.jsonl``
  (strict JSON, fsynced per record), ``checkpoints/``, ``summary.json``.

Importing this package is cheap: each name below loads its module on first use (so reading a run
directory, as the figures do, does not load the training runner and the optimizers).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what the names below resolve to, for type checkers (nothing is imported at run time)
    from sharpscope.io.jsonsafe import as_float
    from sharpscope.io.rundir import RunDirectory, config_differences
    from sharpscope.parallel import resolve_device
    from sharpscope.track.build import build_data, build_model, build_optimizer, build_tracker
    from sharpscope.track.config import OPTIMIZERS, TrainConfig
    from sharpscope.track.dataframe import metrics_dataframe
    from sharpscope.track.runner import train
    from sharpscope.track.sinks import CSVSink, JSONLSink, MultiSink, TensorBoardSink, WandbSink
    from sharpscope.track.tags import flatten_record
    from sharpscope.track.thresholds import default_thresholds
    from sharpscope.track.tracker import SharpnessTracker, evaluate

_HOME = {
    "OPTIMIZERS": "config", "TrainConfig": "config",
    "metrics_dataframe": "dataframe",
    "as_float": "sharpscope.io.jsonsafe",
    "RunDirectory": "sharpscope.io.rundir", "config_differences": "sharpscope.io.rundir",
    "build_data": "build", "build_model": "build", "build_optimizer": "build", "build_tracker": "build",
    "train": "runner",
    "resolve_device": "sharpscope.parallel",
    "CSVSink": "sinks", "JSONLSink": "sinks", "MultiSink": "sinks", "TensorBoardSink": "sinks",
    "WandbSink": "sinks", "flatten_record": "tags",
    "default_thresholds": "thresholds",
    "SharpnessTracker": "tracker", "evaluate": "tracker",
}

__all__ = [
    "CSVSink", "JSONLSink", "MultiSink", "OPTIMIZERS", "RunDirectory", "SharpnessTracker", "TensorBoardSink",
    "TrainConfig", "WandbSink", "as_float", "build_data", "build_model", "build_optimizer", "build_tracker",
    "config_differences", "default_thresholds", "evaluate", "flatten_record", "metrics_dataframe",
    "resolve_device", "train",
]  # the names of _HOME


def __getattr__(name: str) -> Any:
    """PEP 562: ``sharpscope.track.<name>`` imports the submodule that defines it on first access."""
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    home = _HOME[name]
    value = getattr(importlib.import_module(home if "." in home else f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOME))
