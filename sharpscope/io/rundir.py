"""The run directory: everything a training run leaves behind, written so a kill loses nothing.

Layout::

    RUN/
      config.json                 the run's configuration (strict JSON) and the directory's ``format_version``
                                  (:mod:`sharpscope.io.migrations`, which reads every older format); fixed for
                                  the run's life
      metrics.jsonl               one strict-JSON record per line, appended, flushed and fsynced, each with
                                  its SHA-256 chained to the line before (:mod:`sharpscope.io.recordlines`)
      checkpoints/step-00000050.pt  the latest checkpoint (model + spec, optimizer, RNG, ...);
                                  older ones too with ``keep_older`` (config ``keep_checkpoints``)
      summary.json                written atomically when the run ends
      SHA256SUMS                  digests of config.json, metrics.jsonl and summary.json of a finished run
      checkpoints/SHA256SUMS      digests of the checkpoints (:mod:`sharpscope.io.checksums`)
      .lock                       not written (the writing process flocks RUN/ itself); one found is ignored

Verified reads. Every read of ``metrics.jsonl`` checks each line's checksum and its place after the line
before: a damaged line (a changed value, a flipped bit, a foreign byte, a line removed or moved) is refused
in one line naming the file and the line (:class:`~sharpscope.errors.CheckpointError`), never read as a
different number. The records of a format-0 file (no checksums, :func:`~sharpscope.io.migrations.records_v0`)
are read unverified.

Crash consistency. A record is a line ``{"kind": ..., "step": t, ...}``; the pair ``(kind, step)``
identifies it and is never written twice (:meth:`RunDirectory.append_metric` refuses a second
one). Checkpoints are written atomically (temporary file, fsync, rename) and the older one is
deleted only after the new one is in place and its SHA-256, recorded in ``checkpoints/SHA256SUMS``
right after the write, verifies. A checkpoint also lists the ``(kind, step)`` keys of every record
written before it. On resume, :meth:`RunDirectory.prepare_resume`

* uses the newest checkpoint whose digest verifies (a corrupt one is renamed ``*.corrupt``, one
  whose digest was never recorded, cut off by a kill, ``*.incomplete``; one line says so);
* reconciles ``metrics.jsonl`` with it: unparsable or damaged lines (a line torn by the kill, one
  whose checksum fails) are dropped, repeated keys kept once, records with ``step > s`` dropped (the resumed run recomputes them
  identically); if a record the checkpoint lists is missing, it rolls back to the newest good
  checkpoint before the first missing record, or to the start (training is deterministic given
  the seed, so the replay writes the same records);
* rewrites the file atomically when anything changed (with fresh checksums; records from before
  checksums get theirs).

A finished run's ``summary.json`` counts only while it and ``metrics.jsonl`` match the digests in
``SHA256SUMS``; otherwise the run is resumed from its last checkpoint and the summary rebuilt from
the records. A folder holding only sharpscope's own temporary files (a kill during the very first
write) counts as empty; stale temporary files are removed when the lock is taken.

Non-finite numbers are stored as the strings ``"NaN"``, ``"Infinity"`` and ``"-Infinity"``
(:mod:`sharpscope.io.jsonsafe`); ``jsonsafe.as_float`` reads them back.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from torch import nn

from sharpscope.errors import CheckpointError, ConfigError, StorageError, os_error_text
from sharpscope.io import checksums, jsonsafe, migrations, recordlines, runlayout
from sharpscope.io.atomic import append_bytes, atomic_write_bytes, refuse_links, remove_entry
from sharpscope.io.checkpoints import RawCheckpoint, read_checkpoint, save_checkpoint
from sharpscope.io.records import Measurement, RunRecord, RunSummary, is_measurement, record_kind, stored_record
from sharpscope.io.runlayout import CHECKPOINTS, CONFIG, MANIFEST, METRICS, SUMMARY
from sharpscope.models import ModelSpec

LOCK = ".lock"
_CKPT = re.compile(r"^step-(\d+)\.pt$")
_OWN = (CONFIG, METRICS, SUMMARY, CHECKPOINTS, LOCK, MANIFEST)
_OWN_TEMP = re.compile(r"^\.(config\.json|metrics\.jsonl|summary\.json|SHA256SUMS|step-\d+\.pt)\..+\.tmp$")
_log = logging.getLogger("sharpscope")


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, Mapping):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out or {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): d}


def config_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two configs (``"optimizer_kwargs.lr"``); a key present in
    only one of them differs."""
    a, b = _flat(jsonsafe.to_jsonable(old)), _flat(jsonsafe.to_jsonable(new))
    return sorted(k for k in set(a) | set(b) if a.get(k, "<absent>") != b.get(k, "<absent>"))


def record_key(record: Mapping[str, Any]) -> tuple[str, int]:
    """``(kind, step)``: the identity of a metrics record (:func:`sharpscope.io.records.record_kind`)."""
    step = record.get("step")
    if isinstance(step, bool) or not isinstance(step, int):
        raise ConfigError(f"a metrics record needs an integer 'step', got {step!r}")
    return record_kind(record), step


@dataclass(frozen=True)
class Verification:
    """What :meth:`RunDirectory.verify` found: one line per problem (none: the run is intact), the records
    whose checksums verified, those of format 0 (read unverified) and the checkpoints verified."""

    problems: list[str]
    records: int
    unverified: int
    checkpoints: int


class RunDirectory:
    """A run directory at ``path`` (see the module docstring for the layout and guarantees).

    A run in its life cycle (a resumed run also calls :meth:`prepare_resume`, and :meth:`save_checkpoint`
    keeps its model):

    >>> import tempfile
    >>> run = RunDirectory(tempfile.mkdtemp())
    >>> with run.lock():
    ...     run.create({"steps": 2})
    ...     run.append_metric({"step": 0, "loss": 1.5})
    ...     _ = run.write_summary({"steps": 2})
    'new'
    True
    >>> run.create({"steps": 2}), run.read_metrics(), run.verify().problems
    ('resume', [{'step': 0, 'loss': 1.5}], [])
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).expanduser()
        self.config_path, self.metrics_path = self.path / CONFIG, self.path / METRICS
        self.summary_path, self.checkpoint_dir = self.path / SUMMARY, self.path / CHECKPOINTS
        self._keys: set[tuple[str, int]] | None = None
        self._last = ""  # the digest of the last record line (recordlines), once the keys are read
        self._unchecked = False  # the file holds format-0 records (no checksums)
        self._torn = False  # its last line was cut short by a kill
        self._resume_raw: RawCheckpoint | None = None
        self.notes: list[str] = []  # one line per repair made on resume (also logged)

    def _note(self, line: str) -> None:
        self.notes.append(line)
        _log.warning(line)

    # ------------------------------------------------------------------------ life cycle
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold an exclusive advisory lock on the directory (two writers would corrupt it).

        The lock is taken on the folder itself (created if missing), so a folder that turns out not
        to be this run is left exactly as it was. It dies with the process (also on SIGKILL), so a
        killed run never leaves it stuck.
        """
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"{self.path} exists and is not a directory")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StorageError(f"cannot create the run directory {self.path}: {os_error_text(e)}") from None
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no locking
            yield
            return
        fd = os.open(self.path, os.O_RDONLY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ConfigError(f"{self.path}: another process is writing this run directory") from None
            self._remove_temporaries()
            yield
        finally:
            os.close(fd)

    def _is_empty(self) -> bool:
        """No entries but the lock and sharpscope's own temporary files (a kill during the first write)."""
        return not self.path.exists() or all(p.name == LOCK or _OWN_TEMP.match(p.name) for p in self.path.iterdir())

    def _remove_temporaries(self) -> None:
        """Delete temporary files that a killed writer left (only sharpscope's own: ``.NAME.*.tmp``)."""
        for folder in (self.path, self.checkpoint_dir):
            if folder.is_dir():
                for p in folder.iterdir():
                    if _OWN_TEMP.match(p.name):
                        with contextlib.suppress(FileNotFoundError):
                            p.unlink()

    def create(self, config: Mapping[str, Any], *, force: bool = False, defaults: Mapping[str, Any] | None = None,
               outputs: Collection[str] = ()) -> Literal["new", "resume"]:
        """Start a new run or recognise the one to resume.

        * missing or empty folder: write ``config.json`` (``config`` with the current
          ``format_version``, :mod:`sharpscope.io.migrations`), return ``"new"``;
        * a run folder whose ``config.json`` equals ``config``: return ``"resume"`` (the stored config is
          first migrated to the current format, keys missing from it count as their ``defaults``
          (:func:`~sharpscope.io.migrations.with_added_fields`), and
          when it was of an older format or lacked keys it is rewritten, atomically, in the current one);
        * anything else (another config, a folder that is not a run) raises :class:`ConfigError`
          naming ``force=True`` (its ``argument`` is ``"force"``);
        * top-level keys in ``outputs`` (where records go, not what the run computes) may differ: the
          stored config then takes the new values;
        * ``force=True``: delete the run's own files (config, metrics, checkpoints, summary;
          other files in the folder are left alone) and start new.
        """
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"{self.path} exists and is not a directory")
        text = jsonsafe.dumps(migrations.stamped(config), indent=2, sort_keys=True) + "\n"
        if force:
            self._remove_own_files()
        else:
            refuse_links(self.path, _OWN, "run directory")
        if not force and not self._is_empty():
            if not self.config_path.is_file():
                raise ConfigError(f"{self.path} exists, is not empty and is not a sharpscope run directory "
                                  "(no config.json); refusing to overwrite it: choose another folder or pass "
                                  "force=True", argument="force")
            try:
                stored = jsonsafe.loads(self.config_path.read_text(encoding="utf-8"))
            except ValueError as e:
                raise ConfigError(f"{self.config_path} is unreadable ({e}); "
                                  "pass force=True to start the run again", argument="force") from None
            old = self._migrated(stored)
            new = migrations.migrate_config(jsonsafe.loads(text))
            diff = [key for key in config_differences(migrations.with_added_fields(old, defaults or {}), new)
                    if key.split(".")[0] not in outputs]
            if diff:
                shown = ", ".join(diff[:8]) + (f" (+{len(diff) - 8} more)" if len(diff) > 8 else "")
                raise ConfigError(f"{self.path} holds a run with a different configuration (differs in {shown}); "
                                  "choose another folder, or pass force=True to overwrite it", argument="force")
            if set(new) - set(old) or any(old.get(key) != new.get(key) for key in outputs if key in new) \
                    or migrations.format_version(stored) != migrations.FORMAT_VERSION:
                atomic_write_bytes(self.config_path, text.encode())
                if CONFIG in (checksums.read_manifest(self.path) or {}):  # a finished run's digest follows it
                    checksums.record(self.config_path)
            self._keys = None
            return "resume"
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.config_path, text.encode())
        self._keys, self._last, self._unchecked, self._torn = set(), "", False, False
        return "new"

    def _remove_own_files(self) -> None:
        if not self.path.is_dir():
            return
        for name in (CONFIG, METRICS, SUMMARY, MANIFEST):
            with contextlib.suppress(FileNotFoundError):
                (self.path / name).unlink()
        remove_entry(self.checkpoint_dir)  # a link is unlinked, never followed
        self._remove_temporaries()

    def read_config(self) -> dict[str, Any]:
        """The stored ``config.json`` migrated to the current format (:func:`sharpscope.io.migrations.migrate_config`:
        the current layout, without ``format_version``); a newer format is refused with one line."""
        try:
            stored = jsonsafe.loads(self.config_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{self.path}: no config.json; not a sharpscope run directory") from None
        return self._migrated(stored)

    def _migrated(self, stored: Any) -> dict[str, Any]:
        if not isinstance(stored, Mapping):
            raise ConfigError(f"{self.config_path} holds a {type(stored).__name__}, not a config object")
        try:
            return migrations.migrate_config(stored)
        except ConfigError as e:
            raise ConfigError(f"{self.config_path}: {e}", argument=e.argument) from None

    # --------------------------------------------------------------------------- metrics
    def _scan(self) -> recordlines.Scan | None:
        """Every line of ``metrics.jsonl`` checked (:func:`~sharpscope.io.runlayout.scan_metrics`), or None."""
        return runlayout.scan_metrics(self.path)

    def _recorded_metrics_digest(self) -> str | None:
        """The digest of ``metrics.jsonl`` recorded when the run finished, while its summary still verifies
        (a run running again has no summary; a summary written but not yet recorded does not count)."""
        entries = checksums.read_manifest(self.path) or {}
        if METRICS not in entries or SUMMARY not in entries or not self.summary_path.is_file():
            return None
        return entries[METRICS] if checksums.sha256_file(self.summary_path) == entries[SUMMARY] else None

    def read_metrics(self, *, torn_ok: bool = False) -> list[dict[str, Any]]:
        """Every record of ``metrics.jsonl`` in order, each verified against its checksum.

        A last line cut short by a kill (no newline at its end) is skipped when ``torn_ok``. A damaged
        line (a changed value, a flipped bit, a foreign byte, a line removed or moved) raises
        :class:`CheckpointError` naming the file and the line; so does a finished run's file that no
        longer matches the digest recorded in ``SHA256SUMS``.
        """
        scan = self._verified_scan(torn_ok=torn_ok)
        return [] if scan is None else [line.record for line in scan.lines if line.record is not None]

    def _verified_scan(self, *, torn_ok: bool) -> recordlines.Scan | None:
        """:meth:`_scan`, refusing any problem as :meth:`read_metrics` describes."""
        scan = self._scan()
        if scan is None:
            return None
        bad = scan.problems
        if bad or (scan.torn is not None and not torn_ok):
            first = bad[0] if bad else scan.torn
            assert first is not None and first.problem is not None
            more = f" ({len(bad)} damaged lines)" if len(bad) > 1 else ""
            raise CheckpointError(f"{self.metrics_path}: line {first.number}: {first.problem}{more}; rerun the run's "
                                  "train command to recompute it, or see `sharpscope verify` for every problem")
        want = self._recorded_metrics_digest()
        if want is not None and scan.sha256 != want:
            raise CheckpointError(f"{self.metrics_path}: differs from the digest recorded in {self.path / MANIFEST} "
                                  "when the run finished (records removed or added); rerun the run's train command "
                                  "to recompute them")
        return scan

    def _known_keys(self) -> set[tuple[str, int]]:
        if self._keys is None:
            scan = self._verified_scan(torn_ok=True)
            lines = [] if scan is None else [line for line in scan.lines if line.record is not None]
            self._keys = {record_key(line.record) for line in lines if line.record is not None}
            self._last = "" if scan is None else scan.last_digest
            self._unchecked = bool(lines) and scan is not None and not scan.checked
            self._torn = scan is not None and scan.torn is not None
        return self._keys

    def has_metric(self, kind: str, step: int) -> bool:
        """Whether a record ``(kind, step)`` is already in ``metrics.jsonl``."""
        return (kind, step) in self._known_keys()

    def find_metric(self, kind: str, step: int) -> dict[str, Any] | None:
        """The stored record ``(kind, step)``, or None (reads the file)."""
        return next((rec for rec in self.read_metrics(torn_ok=True) if record_key(rec) == (kind, step)), None)

    def append_metric(self, record: RunRecord | Mapping[str, Any]) -> bool:
        """Append one record (a typed record of :mod:`sharpscope.io.records`, stored as its ``to_json()``, or a
        stored record) as a checksummed line (strict JSON, :mod:`sharpscope.io.recordlines`), flush and
        ``os.fsync``; return True.

        A record whose ``(kind, step)`` is already stored is not written again (returns False),
        so every metric is recorded exactly once even when a resumed run recomputes it. A file of format 0
        (records without checksums), or whose last line a kill cut short, is first rewritten,
        atomically, with checksums and without that line.
        """
        record = stored_record(record)
        key = record_key(record)
        if any(name in record for name in recordlines.RESERVED):
            raise ConfigError(f"a metrics record may not hold the keys {' or '.join(recordlines.RESERVED)} "
                              "(the checksums it is stored with)", argument="record")
        keys = self._known_keys()
        if key in keys:
            return False
        if self._unchecked or self._torn:
            if self._unchecked:
                self._adopt_checksums()
            self._note(f"{self.metrics_path}: " + ("added checksums to the records written before records carried "
                                                   "them" if self._unchecked else "dropped a last line cut short"))
            text, self._last = recordlines.encode_all(self.read_metrics(torn_ok=True))
            atomic_write_bytes(self.metrics_path, text.encode())
            self._unchecked = self._torn = False
        line, digest = recordlines.encode(record, self._last)
        self.path.mkdir(parents=True, exist_ok=True)
        append_bytes(self.metrics_path, (line + "\n").encode("utf-8"))  # never through a link or into a special file
        keys.add(key)
        self._last = digest
        return True

    def _adopt_checksums(self) -> None:
        """A run of format 0 is about to get checksums: record its checkpoints as they are (nothing
        can verify them), so that they stay usable in the checksummed run."""
        files = [p for _, p in self._checkpoint_files()]
        if files and checksums.read_manifest(self.checkpoint_dir) is None:
            checksums.record(*files)

    def _scan_metrics(self) -> tuple[list[dict[str, Any]], list[recordlines.Line], int]:
        """Every usable record once, in order; the lines that cannot be used (unreadable, damaged, torn); the
        number of repeated records dropped."""
        scan = self._scan()
        if scan is None:
            return [], [], 0
        readable = [line.record for line in scan.lines if line.record is not None]
        first: dict[tuple[str, int], dict[str, Any]] = {}
        for record in readable:
            first.setdefault(record_key(record), record)
        return list(first.values()), scan.problems + ([scan.torn] if scan.torn is not None else []), \
            len(readable) - len(first)

    def prepare_resume(self, *, replay: bool = True) -> int | None:
        """Make the directory consistent with its newest good checkpoint; return that checkpoint's step.

        See the module docstring: a checkpoint that fails its checksum or cannot be read is set
        aside for the previous one; unparsable and repeated lines are dropped, as are records after
        the checkpoint; records the checkpoint lists but the file lacks are recomputed by rolling
        back to an earlier checkpoint (or the start: None is returned then, as when there is no
        checkpoint) — or, with ``replay=False``, refused with a :class:`CheckpointError` naming them.
        ``metrics.jsonl`` is rewritten atomically when anything changed; the summary is removed.
        """
        self._remove_temporaries()
        format_0 = not self.checksummed()
        records, bad, repeated = self._scan_metrics()
        if bad:
            shown = "; ".join(f"line {line.number}: {line.problem}" for line in bad[:3])
            self._note(f"{self.metrics_path}: dropped {len(bad)} unreadable or damaged line(s) ({shown}"
                       f"{'; ...' if len(bad) > 3 else ''})")
        if repeated:
            self._note(f"{self.metrics_path}: dropped {repeated} repeated record(s)")
        present = {record_key(r) for r in records}
        chosen = self._good_checkpoint()
        while chosen is not None:
            step, raw = chosen
            listed = raw.extra.get("records")
            missing = sorted({(str(k), int(t)) for k, t in listed} - present, key=lambda kt: (kt[1], kt[0])) \
                if isinstance(listed, list) else []
            if not missing:
                break
            shown = ", ".join(f"{k}@{t}" for k, t in missing[:6]) + (f" (+{len(missing) - 6} more)" if len(missing) > 6 else "")
            if not replay:
                raise CheckpointError(f"{self.metrics_path} lacks {len(missing)} record(s) written before the checkpoint "
                                      f"at step {step}: {shown}; pass force=True to start the run again",
                                      argument="force")
            first = missing[0][1]
            earlier = [(t, p) for t, p in self.checkpoints() if t < first]
            for t, p in self._checkpoint_files():
                if t >= first:  # recomputed identically by the replay
                    with contextlib.suppress(FileNotFoundError):
                        p.unlink()
                    with contextlib.suppress(OSError):
                        checksums.forget(p)
            chosen = self._good_checkpoint() if earlier else None
            self._note(f"{self.metrics_path} lacks {len(missing)} record(s) ({shown}); replaying from "
                       + (f"the checkpoint at step {chosen[0]}" if chosen is not None else "the start")
                       + " to recompute them")
        resume_step, self._resume_raw = (None, None) if chosen is None else chosen
        keep = [r for r in records if resume_step is not None and record_key(r)[1] <= resume_step]
        if format_0:
            self._adopt_checksums()
        text, self._last = recordlines.encode_all(keep)
        current = self.metrics_path.read_bytes() if self.metrics_path.is_file() else b""
        if text.encode() != current:
            atomic_write_bytes(self.metrics_path, text.encode())
        with contextlib.suppress(FileNotFoundError):
            self.summary_path.unlink()  # the run is running again: its summary is not final
        checksums.forget(self.metrics_path, self.summary_path)
        self._keys = {record_key(r) for r in keep}
        self._unchecked = self._torn = False
        return resume_step

    # ------------------------------------------------------------------------ checkpoints
    def _checkpoint_files(self) -> list[tuple[int, Path]]:
        """``(step, path)`` of every ``step-*.pt`` file, by step, its write finished or not."""
        if not self.checkpoint_dir.is_dir():
            return []
        return sorted((int(m.group(1)), p) for p in self.checkpoint_dir.iterdir() if (m := _CKPT.match(p.name)))

    def checksummed(self) -> bool:
        """Whether this run was written with checksums (:func:`~sharpscope.io.runlayout.written_with_checksums`)."""
        return runlayout.written_with_checksums(self.path)

    def verify_checkpoint(self, path: str | os.PathLike[str]) -> checksums.Verdict:
        """A checkpoint of this run verified by the run's rule (:func:`~sharpscope.io.runlayout.verify_checkpoint`)."""
        return runlayout.verify_checkpoint(path, self.path)

    def checkpoints(self) -> list[tuple[int, Path]]:
        """``(step, path)`` of the stored checkpoints, by step: those whose checksum is recorded
        (all of them in a run directory of format 0)."""
        recorded = checksums.read_manifest(self.checkpoint_dir)
        if recorded is None and self.checksummed():
            recorded = {}
        return [(t, p) for t, p in self._checkpoint_files() if recorded is None or p.name in recorded]

    def latest_checkpoint(self) -> tuple[int, Path] | None:
        """The newest checkpoint, or None."""
        found = self.checkpoints()
        return found[-1] if found else None

    def save_checkpoint(self, step: int, model: nn.Module, *, spec: ModelSpec | None,
                        state: Mapping[str, Any], keep_older: bool = False) -> Path:
        """Write ``checkpoints/step-<step>.pt`` atomically (model weights + spec, and ``state``:
        optimizer state, generator states, ... ; tensors allowed) with the keys of the records
        written so far, record its SHA-256, verify it, then delete older checkpoints unless
        ``keep_older``."""
        path = self.checkpoint_dir / f"step-{step:08d}.pt"
        listed = [[k, t] for k, t in sorted(self._known_keys(), key=lambda kt: (kt[1], kt[0]))]
        save_checkpoint(path, model, spec=spec, extra={**state, "step": int(step), "records": listed})
        checksums.verify(path)
        if not keep_older:
            older = [p for old_step, p in self._checkpoint_files() if old_step != step]
            for p in older:
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
            checksums.forget(*older)
        return path

    def _good_checkpoint(self) -> tuple[int, RawCheckpoint] | None:
        """The newest checkpoint that verifies and reads, with its contents; the ones after it
        are set aside (``*.corrupt`` or ``*.incomplete``) with a note each."""
        for step, path in reversed(self._checkpoint_files()):
            try:
                verdict = self.verify_checkpoint(path)
                if verdict == "unrecorded":
                    target = path.with_name(path.name + ".incomplete")
                    os.replace(path, target)
                    self._note(f"{path}: its checksum was never recorded (the write was cut off); "
                               f"set aside as {target.name}, resuming from an earlier checkpoint or the start")
                    continue
                raw = read_checkpoint(path, unsafe_flag="")
                if raw.extra.get("step") != step:
                    raise CheckpointError(f"{path}: corrupt file: stored step {raw.extra.get('step')!r} "
                                          "does not match its name")
            except CheckpointError as e:
                target = checksums.set_aside(path)
                self._note(f"{e}; set aside as {target.name}, resuming from an earlier checkpoint or the start")
                continue
            return step, raw
        return None

    def load_checkpoint(self, map_location: Any = "cpu") -> RawCheckpoint | None:
        """The latest checkpoint's contents (weights, spec and ``extra`` = the saved state), or None.

        Its SHA-256 is verified first (a mismatch raises :class:`CheckpointError`, "corrupt file").
        """
        latest = self.latest_checkpoint()
        if latest is None:
            return None
        cached = self._resume_raw
        if cached is not None and cached.path == latest[1] and map_location in ("cpu", None):
            return cached
        raw = read_checkpoint(latest[1], map_location=map_location, unsafe_flag="")
        if raw.extra.get("step") != latest[0]:
            raise CheckpointError(f"{latest[1]}: stored step {raw.extra.get('step')!r} does not match its name")
        return raw

    # ---------------------------------------------------------------------------- summary
    def write_summary(self, summary: Mapping[str, Any]) -> Path:
        """Write ``summary.json`` atomically (strict JSON), then record the digests of the finished
        run's files (config, metrics, summary) in ``SHA256SUMS``."""
        text = jsonsafe.dumps(summary, indent=2) + "\n"
        path = atomic_write_bytes(self.summary_path, text.encode())
        checksums.record(*(p for p in (self.config_path, self.metrics_path, self.summary_path) if p.is_file()))
        return path

    def read_summary(self) -> dict[str, Any] | None:
        """The stored summary, or None while the run is unfinished."""
        if not self.summary_path.is_file():
            return None
        return jsonsafe.loads(self.summary_path.read_text(encoding="utf-8"))

    def checkpoint_problems(self) -> list[str]:
        """One line per checkpoint that cannot be trusted (reads only): a digest that differs, a file that
        ``checkpoints/SHA256SUMS`` records but is gone, a checkpoint that it does not record (in a
        checksummed run, also when the manifest itself is gone or unreadable)."""
        recorded = checksums.read_manifest(self.checkpoint_dir) or {}
        problems = [f"{self.checkpoint_dir / name}: missing, though {self.checkpoint_dir / MANIFEST} records it"
                    for name in sorted(recorded) if _CKPT.match(name) and not (self.checkpoint_dir / name).is_file()]
        for _, path in self._checkpoint_files():
            try:
                if self.verify_checkpoint(path) == "unrecorded":
                    problems.append(f"{path}: not recorded in {self.checkpoint_dir / MANIFEST} (its write did not "
                                    "finish, or the manifest was damaged): it cannot be verified")
            except CheckpointError as e:
                problems.append(str(e))
        return problems

    def _final_checkpoint_problems(self, summary: Mapping[str, Any]) -> list[str]:
        """:meth:`checkpoint_problems`, and the finished run's own checkpoint (named in its summary) gone."""
        problems = self.checkpoint_problems()
        named = summary.get("checkpoint")
        if isinstance(named, str) and named:
            final = self.checkpoint_dir / Path(named).name
            if not final.is_file() and not any(line.startswith(f"{final}:") for line in problems):
                problems.append(f"{final}: the finished run's checkpoint is missing")
        return problems

    def _set_aside_checkpoints(self) -> None:
        """Set aside every checkpoint that does not verify and forget the manifest entries of missing ones,
        so that the resume that follows starts from a good one (or the start) and replays the rest."""
        recorded = checksums.read_manifest(self.checkpoint_dir) or {}
        gone = [self.checkpoint_dir / n for n in recorded if _CKPT.match(n) and not (self.checkpoint_dir / n).is_file()]
        checksums.forget(*gone)
        for _, path in self._checkpoint_files():
            try:
                if self.verify_checkpoint(path) != "unrecorded":
                    continue
                os.replace(path, path.with_name(path.name + ".incomplete"))
            except CheckpointError:
                checksums.set_aside(path)

    def verify(self) -> Verification:
        """Check the whole run without changing it: ``config.json`` parses, every record line verifies (a
        last line cut short by a kill counts as a problem too), a finished run's files match ``SHA256SUMS``
        and its checkpoint is present, every checkpoint matches ``checkpoints/SHA256SUMS``, and the records
        the newest good checkpoint lists are all in ``metrics.jsonl``. One line per problem."""
        if not self.config_path.is_file():
            raise ConfigError(f"{self.path}: not a sharpscope run directory (no config.json)", argument="run")
        problems: list[str] = []
        try:
            self.read_config()
        except ValueError as e:
            problems.append(f"{self.config_path}: not strict JSON ({str(e).splitlines()[0]})")
        scan = self._scan()
        if scan is not None:
            problems += [f"{self.metrics_path}: line {line.number}: {line.problem}"
                         for line in scan.problems + ([scan.torn] if scan.torn is not None else [])]
        recorded = checksums.read_manifest(self.path)
        for path in (self.config_path, self.metrics_path, self.summary_path):
            try:
                if path.name in (recorded or {}) and not path.is_file():
                    problems.append(f"{path}: missing, though {self.path / MANIFEST} records it")
                elif path.is_file() and checksums.verify(path) == "unrecorded" and path.name != CONFIG \
                        and self.summary_path.is_file():
                    problems.append(f"{path}: not recorded in {self.path / MANIFEST}: the finished run's file "
                                    "was changed or its manifest damaged")
            except CheckpointError as e:
                problems.append(str(e))
        if self.summary_path.is_file():
            if recorded is None and self.checksummed():
                problems.append(f"{self.path / MANIFEST}: missing: the finished run cannot be verified")
            try:
                summary = self.read_summary() or {}
                problems += [p for p in self._final_checkpoint_problems(summary) if p not in problems]
            except ValueError as e:
                problems.append(f"{self.summary_path}: not strict JSON ({str(e).splitlines()[0]})")
        else:
            problems += self.checkpoint_problems()
        good = [(t, p) for t, p in self.checkpoints() if not any(line.startswith(f"{p}:") for line in problems)]
        if good and scan is not None:
            try:
                listed = read_checkpoint(good[-1][1], unsafe_flag="").extra.get("records")
            except CheckpointError as e:
                problems.append(str(e))
                listed = None
            present = {record_key(line.record) for line in scan.lines if line.record is not None}
            missing = sorted({(str(k), int(t)) for k, t in listed} - present, key=lambda kt: (kt[1], kt[0])) \
                if isinstance(listed, list) else []
            if missing:
                shown = ", ".join(f"{k}@{t}" for k, t in missing[:6]) + (" ..." if len(missing) > 6 else "")
                problems.append(f"{self.metrics_path}: lacks {len(missing)} record(s) written before the checkpoint "
                                f"at step {good[-1][0]}: {shown}")
        lines = [] if scan is None else scan.lines
        return Verification(problems=problems,
                            records=sum(1 for ln in lines if ln.record is not None and ln.digest is not None),
                            unverified=0 if scan is None or scan.checked else len(lines), checkpoints=len(good))

    def finished_summary(self) -> dict[str, Any] | None:
        """The stored summary if the finished run verifies: ``summary.json`` and ``metrics.jsonl`` match the
        digests in ``SHA256SUMS``, every record its checksum, and every checkpoint (the final one present)
        ``checkpoints/SHA256SUMS``. Else None, with a note per problem, so that the run is resumed (from its
        newest good checkpoint; damaged checkpoints are set aside first) and its summary rebuilt."""
        if not self.summary_path.is_file():
            return None
        try:
            recorded = checksums.read_manifest(self.path)
            if recorded is None and self.checksummed():
                raise CheckpointError(f"{self.path / MANIFEST}: missing: the finished run cannot be verified")
            for path in (self.summary_path, self.metrics_path):
                if not path.is_file():
                    if path.name in (recorded or {}):
                        raise CheckpointError(f"{path}: missing, though the finished run recorded it")
                elif checksums.verify(path) == "unrecorded":
                    raise CheckpointError(f"{path}: changed since the run finished (no recorded checksum)")
            self.read_metrics()
            summary = self.read_summary()
            problems = [] if summary is None else self._final_checkpoint_problems(summary)
            if problems:
                for line in problems:
                    self._note(f"{line}; recomputing it")
                self._set_aside_checkpoints()
                return None
            return summary
        except (CheckpointError, ValueError, UnicodeDecodeError) as e:
            self._note(f"{str(e).splitlines()[0]}; rebuilding the run's summary from its last checkpoint")
            return None


def read_summary(run_dir: str | os.PathLike[str]) -> RunSummary | None:
    """The typed summary of the run directory ``run_dir``, or None while the run is unfinished."""
    stored = RunDirectory(run_dir).read_summary()
    return None if stored is None else RunSummary.from_json(stored)


def read_measurements(run_dir: str | os.PathLike[str], *, torn_ok: bool = False) -> list[Measurement]:
    """The measurement records of the run directory ``run_dir``, typed, in step order (``torn_ok`` skips a
    last line torn by a kill, as :meth:`~sharpscope.track.RunDirectory.read_metrics` does)."""
    records = RunDirectory(run_dir).read_metrics(torn_ok=torn_ok)
    return sorted((Measurement.from_json(r) for r in records if is_measurement(r)), key=lambda m: m.step)
