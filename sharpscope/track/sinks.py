"""Where a tracker's records go: JSONL (the run directory), CSV, TensorBoard, Weights & Biases.

A *sink* is any callable taking one record, a JSON-like dict ``{"kind": ..., "step": t, ...}``
(:class:`~sharpscope.track.SharpnessTracker`'s ``sink=``). The sinks here write the same record to
different places; :class:`MultiSink` sends each record to several::

    run = RunDirectory("runs/gd")
    sink = MultiSink(JSONLSink(run), CSVSink("runs/gd/metrics.csv"), TensorBoardSink("runs/gd/tb"))
    tracker = SharpnessTracker((x, y), loss_fn, every=50, k=2, sink=sink)

Tables (CSV, TensorBoard, W&B, :func:`~sharpscope.track.dataframe.metrics_dataframe`) see a record
flattened by :func:`flatten_record`: nested keys joined by dots (``trace.estimate``), list entries
indexed (``eigenvalues.0``). TensorBoard and W&B take the numbers only: each under the tag
``kind/key`` (booleans as 0/1, the stored strings ``"NaN"``/``"Infinity"`` as floats; other strings
and ``None`` are left out, the JSONL keeps them).

Only the JSONL is the run's record: a resumed run drops the records written after its last
checkpoint and writes them again, once, in ``metrics.jsonl``; the other sinks append what they are
given, so they then hold those steps twice (TensorBoard and W&B plot both points at the same step).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from sharpscope.errors import ConfigError
from sharpscope.io import atomic_write_bytes, jsonsafe
from sharpscope.io.rundir import RunDirectory

Sink = Callable[[Mapping[str, Any]], Any]


def flatten_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """One level of ``key: value`` with JSON-safe scalar values (see the module docstring).

    Empty lists and dicts are kept as their JSON text (``"[]"``, ``"{}"``), so no key is lost.
    """
    out: dict[str, Any] = {}

    def walk(value: Any, key: str) -> None:
        if isinstance(value, Mapping) and value:
            for k, v in value.items():
                walk(v, f"{key}.{k}" if key else str(k))
        elif isinstance(value, list) and value:
            for i, v in enumerate(value):
                walk(v, f"{key}.{i}")
        elif isinstance(value, (Mapping, list)):
            out[key] = jsonsafe.dumps(value)
        else:
            out[key] = value

    walk(jsonsafe.to_jsonable(dict(record)), "")
    return out


def record_scalars(record: Mapping[str, Any]) -> tuple[str, int, dict[str, float]]:
    """``(kind, step, {key: number})`` of a record, for the sinks that store numbers only."""
    flat = flatten_record(record)
    kind, step = str(flat.pop("kind", "metrics")), flat.pop("step", None)
    if not isinstance(step, int) or isinstance(step, bool):
        raise ConfigError(f"a record needs an integer 'step', got {step!r}")
    numbers: dict[str, float] = {}
    for key, value in flat.items():
        if isinstance(value, (bool, int, float)):
            numbers[key] = float(value)
        elif isinstance(value, str) and value in jsonsafe.NONFINITE:
            numbers[key] = jsonsafe.NONFINITE[value]
    return kind, step, numbers


class JSONLSink:
    """Append records to a run directory's ``metrics.jsonl`` (strict JSON, fsynced, each ``(kind, step)`` once).

    ``run`` is a :class:`RunDirectory` or its path. Returns what
    :meth:`RunDirectory.append_metric` returns: False for a record already stored.
    """

    def __init__(self, run: RunDirectory | str | os.PathLike[str]) -> None:
        self.run = run if isinstance(run, RunDirectory) else RunDirectory(run)

    def __call__(self, record: Mapping[str, Any]) -> bool:
        return self.run.append_metric(record)


class CSVSink:
    """One CSV row per record, one column per flattened key (see :func:`flatten_record`).

    Rows are appended, flushed and fsynced. When a record brings a key not yet in the header, the
    file is rewritten atomically with the wider header (earlier rows get empty cells); an existing
    file is continued with its header. ``None`` is an empty cell; the stored strings ``"NaN"``,
    ``"Infinity"`` and ``"-Infinity"`` are written as they are.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise ConfigError(f"CSV sink {self.path} is a folder; give a file name")
        self.columns: list[str] = []
        if self.path.is_file():
            with open(self.path, newline="", encoding="utf-8") as f:
                self.columns = next(csv.reader(f), [])

    def __call__(self, record: Mapping[str, Any]) -> None:
        flat = {k: "" if v is None else v for k, v in flatten_record(record).items()}
        new = [k for k in flat if k not in self.columns]
        if new or not self.path.is_file():
            self._rewrite([*self.columns, *new], flat)
            return
        with open(self.path, "a", newline="", encoding="utf-8") as f:
            csv.DictWriter(f, self.columns).writerow(flat)
            f.flush()
            os.fsync(f.fileno())

    def _rewrite(self, columns: list[str], row: Mapping[str, Any]) -> None:
        rows: list[dict[str, str]] = []
        if self.path.is_file():
            with open(self.path, newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
        text = io.StringIO()
        writer = csv.DictWriter(text, columns, restval="")
        writer.writeheader()
        writer.writerows([*rows, row])
        atomic_write_bytes(self.path, text.getvalue().encode("utf-8"))
        self.columns = columns


class TensorBoardSink:
    """Every number of a record as a TensorBoard scalar ``kind/key`` at the record's step.

    Needs the ``tensorboard`` package (``pip install sharpscope[tensorboard]``). Events are flushed
    after each record; call :meth:`close` at the end. TensorBoard stores scalars in float32.
    """

    def __init__(self, logdir: str | os.PathLike[str]) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("TensorBoardSink needs the tensorboard package: pip install 'sharpscope[tensorboard]'") \
                from None
        self.logdir = Path(logdir)
        self.writer = SummaryWriter(log_dir=str(self.logdir))

    def __call__(self, record: Mapping[str, Any]) -> None:
        kind, step, numbers = record_scalars(record)
        for key, value in numbers.items():
            self.writer.add_scalar(f"{kind}/{key}", value, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    """Every number of a record logged to Weights & Biases as ``kind/key``, against the record's ``step``.

    ``run`` is a W&B run; without one, ``wandb.init(**init_kwargs)`` starts one (e.g.
    ``project="sharpness", mode="offline"``). The record's step is logged as the metric ``step``
    and every key is plotted against it (``define_metric``), so records of several kinds at the
    same step, or arriving out of order, are all kept. Needs ``wandb``
    (``pip install sharpscope[wandb]``); call :meth:`close` to finish a run it started.
    """

    def __init__(self, run: Any = None, **init_kwargs: Any) -> None:
        if run is not None and init_kwargs:
            raise ConfigError(f"WandbSink: give a run or wandb.init arguments, not both ({sorted(init_kwargs)})")
        self._owned = run is None
        if run is None:
            try:
                import wandb
            except ImportError:
                raise ConfigError("WandbSink needs the wandb package: pip install 'sharpscope[wandb]'") from None
            run = wandb.init(**init_kwargs)
        self.run = run
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")

    def __call__(self, record: Mapping[str, Any]) -> None:
        kind, step, numbers = record_scalars(record)
        self.run.log({"step": step, **{f"{kind}/{k}": v for k, v in numbers.items()}})

    def close(self) -> None:
        if self._owned:
            self.run.finish()


class MultiSink:
    """Send each record to every sink, in order; returns their results as a list.

    A sink that raises does not keep the record from the sinks after it; the first error is
    raised once all have been called.
    """

    def __init__(self, *sinks: Sink) -> None:
        if not sinks or not all(callable(s) for s in sinks):
            raise ConfigError("MultiSink needs one or more callables taking a record")
        self.sinks = sinks

    def __call__(self, record: Mapping[str, Any]) -> list[Any]:
        results, errors = [], []
        for sink in self.sinks:
            try:
                results.append(sink(record))
            except Exception as e:  # noqa: BLE001 — re-raised below, after the other sinks
                results.append(None)
                errors.append(e)
        if errors:
            raise errors[0]
        return results

    def close(self) -> None:
        """Close every sink that has a ``close`` method."""
        for sink in self.sinks:
            close = getattr(sink, "close", None)
            if callable(close):
                close()
