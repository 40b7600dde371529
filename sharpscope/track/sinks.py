"""Where a tracker's records go: JSONL (the run directory), CSV, TensorBoard, Weights & Biases.

A *sink* is any callable taking one record (:class:`~sharpscope.track.SharpnessTracker`'s ``sink=``): the
tracker sends typed records of :mod:`sharpscope.io.records` (a :class:`~sharpscope.io.records.Measurement`,
...), whose stored form ``record.to_json()`` is ``{"kind": ..., "step": t, ...}``; the sinks here also take
that stored form (a resumed run's kept records, or a dict of your own). They write the same record to
different places; :class:`MultiSink` sends each record to several (``TensorBoardSink(folder)``
and ``WandbSink(...)`` join the same way):

    >>> import tempfile
    >>> from sharpscope.io.records import Measurement
    >>> from sharpscope.io.rundir import RunDirectory
    >>> run = RunDirectory(tempfile.mkdtemp() + "/gd")
    >>> _ = run.create({"model": {"name": "mlp"}})
    >>> sink = MultiSink(JSONLSink(run), CSVSink(run.path / "metrics.csv"))
    >>> sink(Measurement.made({"step": 0, "eigenvalues": [3.0, 1.0], "trace": {"estimate": 7.5}}))
    [True, None]
    >>> (run.path / "metrics.csv").read_text().splitlines()[0]
    'kind,step,eigenvalues.0,eigenvalues.1,trace.estimate'

CSV and :func:`~sharpscope.track.dataframe.metrics_dataframe` see a record flattened by
:func:`~sharpscope.track.tags.flatten_record`: nested keys joined by dots (``trace.estimate``), list entries indexed
(``eigenvalues.0``). TensorBoard and W&B chart the quantities that change along a run under the names
of :mod:`sharpscope.track.tags` (``sharpness/lambda_max``, ``sharpness/edge``, ``trace``,
``loss/train``, ...) and show the constants (probe size, seed, step size, ...) once.

Resuming. The JSONL is the run's record: a resumed run drops the records written after its last
checkpoint and writes them again, once. :func:`sharpscope.track.train` (``TrainConfig.log``) keeps
its other sinks in step with it: each record goes to them only when the JSONL takes it as new, and
before the first one each sink's ``catch_up(kept_records, checkpoint_step)`` rewinds it (the CSV is
rewritten from the kept records; TensorBoard's scalars after the checkpoint are dropped from its
event files; W&B skips steps its run already holds). So no sink holds a step twice. In a loop of
your own, call ``catch_up`` the same way when you resume.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sharpscope.errors import ConfigError
from sharpscope.io import atomic_write_bytes
from sharpscope.io.atomic import append_bytes
from sharpscope.io.rundir import RunDirectory
from sharpscope.track import tags
from sharpscope.track.tags import AnyRecord, flatten_record, record_scalars

Sink = Callable[[AnyRecord], Any]


class JSONLSink:
    """Append records to a run directory's ``metrics.jsonl`` (strict JSON, fsynced, each ``(kind, step)`` once).

    ``run`` is a :class:`RunDirectory` or its path. Returns what
    :meth:`RunDirectory.append_metric` returns: False for a record already stored.
    """

    def __init__(self, run: RunDirectory | str | os.PathLike[str]) -> None:
        self.run = run if isinstance(run, RunDirectory) else RunDirectory(run)

    def __call__(self, record: AnyRecord) -> bool:
        """Append ``record`` (its stored form) to the run's ``metrics.jsonl``."""
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

    def __call__(self, record: AnyRecord) -> None:
        """Append ``record`` as a CSV row, widening the header when new fields appear."""
        flat = self._row(record)
        new = [k for k in flat if k not in self.columns]
        if new or not self.path.is_file():
            rows: list[dict[str, str]] = []
            if self.path.is_file():
                with open(self.path, newline="", encoding="utf-8") as f:
                    rows = list(csv.DictReader(f))
            self._write([*self.columns, *new], [*rows, flat])
            return
        row = io.StringIO()
        csv.DictWriter(row, self.columns).writerow(flat)
        append_bytes(self.path, row.getvalue().encode("utf-8"))

    def catch_up(self, records: Sequence[AnyRecord], step: int | None = None) -> None:
        """Rewrite the file (atomically) to hold exactly ``records``, one row each, the header in the order
        their keys first appear: what it holds after those records alone (a resumed run's kept records;
        ``step``, its checkpoint, is implied by them)."""
        del step
        flats = [self._row(r) for r in records]
        self._write(list(dict.fromkeys(key for flat in flats for key in flat)), flats)

    @staticmethod
    def _row(record: AnyRecord) -> dict[str, Any]:
        """The flattened record with None as an empty cell."""
        return {k: "" if v is None else v for k, v in flatten_record(record).items()}

    def _write(self, columns: list[str], rows: Sequence[Mapping[str, Any]]) -> None:
        """Replace the file (atomically) by a header of ``columns`` (none when empty) and ``rows``."""
        text = io.StringIO()
        writer = csv.DictWriter(text, columns, restval="")
        if columns:
            writer.writeheader()
        writer.writerows(rows)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.path, text.getvalue().encode("utf-8"))
        self.columns = columns


class TensorBoardSink:
    """A record's quantities as TensorBoard scalars named as readers look for them, its constants once.

    Scalars are named by :func:`~sharpscope.track.tags.readable_scalars` (``sharpness/lambda_max``,
    ``sharpness/edge``, ``trace``, ``loss/train``, ...) at the record's step. The first measurement's
    constants (:func:`~sharpscope.track.tags.record_constants`: probe size, BN mode, dimension, seed,
    step size, ...) are written once as the text ``run/settings``; ``hparams`` (e.g. a training run's
    config, flattened) once as the text ``run/config`` and in the HPARAMS dashboard; a custom-scalars
    layout overlays λ_max with its edge (:data:`~sharpscope.track.tags.OVERLAYS`). Events are flushed
    after each record; call :meth:`close` at the end. TensorBoard stores scalars in float32. Its
    event files end in ``.sharpscope``; give each run its own folder (TensorBoard pointed at the parent
    compares them). Needs the ``tensorboard`` package (``pip install sharpscope[tensorboard]``).
    """

    SUFFIX = ".sharpscope"

    def __init__(self, logdir: str | os.PathLike[str], *, hparams: Mapping[str, Any] | None = None) -> None:
        try:
            import tensorboard  # noqa: F401
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401
        except ImportError:
            raise ConfigError("TensorBoardSink needs the tensorboard package: pip install 'sharpscope[tensorboard]'",
                              argument="logdir") from None
        self.logdir = Path(logdir)
        if self.logdir.exists() and not self.logdir.is_dir():
            raise ConfigError(f"TensorBoard folder {self.logdir} is a file; give a folder", argument="logdir")
        self.hparams = None if hparams is None else flatten_record(hparams)
        self._writer: Any = None
        self._purge_step: int | None = None
        self._written = {"layout": False, "config": False, "settings": False}

    @property
    def writer(self) -> Any:
        """The ``SummaryWriter`` (created on first use, after any :meth:`catch_up`)."""
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.logdir), filename_suffix=self.SUFFIX,
                                         purge_step=self._purge_step)
        return self._writer

    def own_files(self) -> list[Path]:
        """The event files this sink writes in ``logdir`` (name order)."""
        return sorted(self.logdir.glob(f"events.out.tfevents.*{self.SUFFIX}")) if self.logdir.is_dir() else []

    def __call__(self, record: AnyRecord) -> None:
        """Log ``record``'s numbers as scalars at its step."""
        self._write(record, None)

    def _write(self, record: AnyRecord, present: set[tuple[str, int]] | None) -> None:
        """Write ``record`` (its scalars not already ``present`` as ``(tag, step)``), and the one-off summaries
        not yet written; flush."""
        _, step, _ = record_scalars(record)
        writer = self.writer
        if not self._written["layout"]:
            writer.add_custom_scalars({"sharpscope": {name: ["Multiline", list(charts)]
                                                      for name, charts in tags.OVERLAYS.items()}})
            self._written["layout"] = True
        if self.hparams is not None and not self._written["config"]:
            from torch.utils.tensorboard.summary import hparams as hparams_summary

            for summary in hparams_summary(tags.hparam_values(self.hparams),
                                           {"sharpness/lambda_max": math.nan, "loss/train": math.nan}):
                writer.file_writer.add_summary(summary)
            writer.add_text("run/config", tags.constants_table(self.hparams), 0)
            self._written["config"] = True
        constants = tags.record_constants(record)
        if constants and not self._written["settings"]:
            writer.add_text("run/settings", tags.constants_table(constants), step)
            self._written["settings"] = True
        for tag, value in tags.readable_scalars(record).items():
            if present is None or (tag, step) not in present:
                writer.add_scalar(tag, value, global_step=step)
        writer.flush()

    def catch_up(self, records: Sequence[AnyRecord], step: int | None) -> None:
        """Make the folder hold what it would after ``records`` alone (a resumed run's kept records, its
        checkpoint at ``step``; None: the run starts over), before anything else is written.

        Scalars after ``step`` (all events, with ``step`` None) are dropped from this sink's event files
        and the next file starts with TensorBoard's restart marker at ``step + 1``; the scalars of
        ``records`` the files lack (all of them in a folder new to the run, or one cut off by a kill
        between the JSONL and TensorBoard) are written.
        """
        if self._writer is not None:
            raise ConfigError("TensorBoardSink.catch_up must come before the first record")
        present: set[tuple[str, int]] = set()
        for path in self.own_files():
            present |= self._rewind(path, step)
        self._purge_step = None if step is None else step + 1
        for record in records:
            self._write(record, present)

    def _rewind(self, path: Path, step: int | None) -> set[tuple[str, int]]:
        """Rewrite ``path`` (atomically) without the summaries after ``step`` (all of them for None) and
        without older restart markers; note which one-off summaries it keeps; return the ``(tag, step)``
        of the scalars it keeps."""
        from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog
        from tensorboard.summary.writer.record_writer import RecordWriter

        kept: list[bytes] = []
        scalars: set[tuple[str, int]] = set()
        changed = False
        for raw in RawEventFileLoader(str(path)).Load():
            event = Event.FromString(raw)
            restart = event.HasField("session_log") and event.session_log.status == SessionLog.START
            if restart or (event.HasField("summary") and (step is None or event.step > step)):
                changed = True
                continue
            kept.append(raw)
            for value in event.summary.value:
                plugin = value.metadata.plugin_data.plugin_name
                if plugin == "custom_scalars":
                    self._written["layout"] = True
                elif plugin == "hparams" or value.tag.startswith("run/config"):
                    self._written["config"] = True
                elif value.tag.startswith("run/settings"):
                    self._written["settings"] = True
                else:
                    scalars.add((value.tag, event.step))
        if changed:
            buffer = io.BytesIO()
            writer = RecordWriter(buffer)
            for raw in kept:
                writer.write(raw)
            atomic_write_bytes(path, buffer.getvalue())
        return scalars

    def close(self) -> None:
        """Flush and close the event writer."""
        if self._writer is not None:
            self._writer.close()


class WandbSink:
    """A record's quantities logged to Weights & Biases under the chart names of TensorBoard, against its ``step``.

    ``run`` is a W&B run; without one, ``wandb.init(**init_kwargs)`` starts one (e.g.
    ``project="sharpness", mode="offline"``). Charts are named by
    :func:`~sharpscope.track.tags.readable_scalars`; the record's step is logged as the metric
    ``step`` and every chart is plotted against it (``define_metric``), so records of several kinds
    at the same step, or arriving out of order, are all kept. The first measurement's constants go
    to ``run.config``. The run's summary remembers the last step logged (``sharpscope/last_step``)
    and the kinds logged at it, and a record at or before it that the run already holds is not logged
    again, so a resumed training run that sends its last records a second time (or :meth:`catch_up`)
    adds each step once. Needs ``wandb`` (``pip install sharpscope[wandb]``); call :meth:`close` to
    finish a run it started.
    """

    def __init__(self, run: Any = None, **init_kwargs: Any) -> None:
        if run is not None and init_kwargs:
            raise ConfigError(f"WandbSink: give a run or wandb.init arguments, not both ({sorted(init_kwargs)})")
        self._owned = run is None
        if run is None:
            try:
                import wandb
            except ImportError:
                raise ConfigError("WandbSink needs the wandb package: pip install 'sharpscope[wandb]'",
                                  argument="wandb") from None
            run = wandb.init(**init_kwargs)
        self.run = run
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")
        summary = getattr(run, "summary", None) or {}
        last, kinds = summary.get("sharpscope/last_step"), summary.get("sharpscope/last_kinds")
        self._last: tuple[int, list[str]] | None = None
        if isinstance(last, (int, float)) and not isinstance(last, bool):
            self._last = (int(last), [str(k) for k in kinds] if isinstance(kinds, list) else [])
        self._constants_sent = False

    def __call__(self, record: AnyRecord) -> bool:
        """Log ``record``; False when the run already holds it (see the class docstring)."""
        kind, step, _ = record_scalars(record)
        if self._last is not None and (step < self._last[0] or (step == self._last[0] and kind in self._last[1])):
            return False
        constants = tags.record_constants(record)
        config = getattr(self.run, "config", None)
        if constants and not self._constants_sent and config is not None:
            config.update(constants, allow_val_change=True)
            self._constants_sent = True
        self.run.log({"step": step, **tags.readable_scalars(record)})
        kinds = self._last[1] + [kind] if self._last is not None and self._last[0] == step else [kind]
        self._last = (step, kinds)
        summary = getattr(self.run, "summary", None)
        if summary is not None:
            summary["sharpscope/last_step"] = step
            summary["sharpscope/last_kinds"] = kinds
        return True

    def catch_up(self, records: Sequence[AnyRecord], step: int | None) -> None:
        """Log those of a resumed run's kept ``records`` that the W&B run lacks (``step`` is unused:
        records after it are skipped when they arrive again)."""
        del step
        for record in records:
            self(record)

    def close(self) -> None:
        """Finish the W&B run if this sink started it."""
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

    def __call__(self, record: AnyRecord) -> list[Any]:
        """Pass ``record`` to every sink; a failing sink does not stop the others (errors raised after all ran)."""
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
