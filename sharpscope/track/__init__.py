"""Tracking sharpness along training: a tracker callback, a resumable runner, the run directory.

* :class:`SharpnessTracker` — every ``k`` steps of any loop: top eigenvalues (warm-started
  Lanczos), trace, ‖∇L‖, the matching stability threshold, train/test loss and accuracy, and
  the cost of each measurement.
* :func:`train` with a :class:`TrainConfig` — full-batch GD (gradient accumulation over fixed
  batches) or mini-batch training with ``gd``/``sgd``/``sam``/``adam``/``adamw``, into a run
  directory; a killed run resumes from its last checkpoint with every record written exactly once.
* sinks (:mod:`sharpscope.track.sinks`) — where records go: :class:`JSONLSink`, :class:`CSVSink`,
  :class:`TensorBoardSink`, :class:`WandbSink`, several at once with :class:`MultiSink`;
  :func:`metrics_dataframe` reads a run's records back as a pandas DataFrame.
* :class:`RunDirectory` — ``config.json``, ``metrics.jsonl`` (strict JSON, fsynced per record),
  ``checkpoints/``, ``summary.json``.
"""

from sharpscope.track.config import OPTIMIZERS, TrainConfig
from sharpscope.track.dataframe import metrics_dataframe
from sharpscope.track.jsonsafe import as_float
from sharpscope.track.rundir import RunDirectory, config_differences
from sharpscope.track.runner import build_data, build_model, build_optimizer, resolve_device, train
from sharpscope.track.sinks import CSVSink, JSONLSink, MultiSink, TensorBoardSink, WandbSink, flatten_record
from sharpscope.track.thresholds import default_thresholds
from sharpscope.track.tracker import SharpnessTracker, evaluate

__all__ = [
    "CSVSink", "JSONLSink", "MultiSink", "OPTIMIZERS", "RunDirectory", "SharpnessTracker", "TensorBoardSink",
    "TrainConfig", "WandbSink", "as_float", "build_data", "build_model", "build_optimizer", "config_differences",
    "default_thresholds", "evaluate", "flatten_record", "metrics_dataframe", "resolve_device", "train",
]
