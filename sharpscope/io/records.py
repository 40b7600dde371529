"""Typed run records: one line of ``metrics.jsonl`` as a :class:`Measurement`, an :class:`Alignment`, a
:class:`SamBatch`, an :class:`UpdateReading` or a :class:`Divergence`; ``summary.json`` as a :class:`RunSummary`.

A record on disk is a strict-JSON object ``{"kind": ..., "step": t, ...}`` (non-finite floats stored as
the strings ``"NaN"``/``"Infinity"``/``"-Infinity"``, see :mod:`sharpscope.io.jsonsafe`). A record without
``"kind"`` is a measurement (:func:`record_kind`). The typed records decode the stored strings into floats,
keep every key they do not know in ``extra``, and remember the order of the keys they were read with, so
``Measurement.from_json(r).to_json() == r`` for every stored record ``r``: nothing is lost on a round trip.
A record made in code (:meth:`Measurement.made`) names typed fields only and is stored in the order they
were given, None values included: the tracker and the runner write their records this way.

Dotted keys reach into a record: ``"eigenvalues.0"`` is ``λ_max``, ``"trace.estimate"`` the trace
(:func:`lookup`, :func:`number_at`).

>>> m = Measurement.from_json({"kind": "measurement", "step": 3, "eigenvalues": ["Infinity", 2.0], "note": "x"})
>>> m.step, m.lambda_max, m.extra
(3, inf, {'note': 'x'})
>>> m.to_json()
{'kind': 'measurement', 'step': 3, 'eigenvalues': ['Infinity', 2.0], 'note': 'x'}
>>> number_at({"trace": {"estimate": "NaN"}}, "trace.estimate"), number_at({"eigenvalues": [5.0]}, "eigenvalues.1")
(nan, nan)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Container, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar, overload

from sharpscope.errors import DataError
from sharpscope.io.jsonsafe import NONFINITE, as_number, decode, to_jsonable

MEASUREMENT = "measurement"
ALIGNMENT = "alignment"
UPDATE_CURVATURE = "update_curvature"
SAM_BATCH = "sam_batch"
DIVERGED = "diverged"


def record_kind(record: _Record | Mapping[str, Any]) -> str:
    """The kind of a typed or stored record; ``"measurement"`` for a stored record without a ``"kind"`` key."""
    if isinstance(record, _Record):
        return record.KIND
    return str(record.get("kind", MEASUREMENT))


def record_step(record: _Record | Mapping[str, Any]) -> int:
    """The step of a typed or stored record (:class:`DataError` for a stored one without an integer ``step``)."""
    step = getattr(record, "step", None) if isinstance(record, _Record) else record.get("step")
    if isinstance(step, bool) or not isinstance(step, int):
        raise DataError(f"a {record_kind(record)} record needs an integer 'step', got {step!r}")
    return step


def is_measurement(record: _Record | Mapping[str, Any]) -> bool:
    """Whether ``record`` is a measurement record (:func:`record_kind`)."""
    return record_kind(record) == MEASUREMENT


def lookup(record: Mapping[str, Any], key: str) -> Any:
    """The value at dotted ``key`` in ``record`` (list entries by index: ``"eigenvalues.1"``), or None when any
    part is missing."""
    node: Any = record
    for part in key.split("."):
        if isinstance(node, Mapping):
            node = node.get(part)
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def number_at(record: Mapping[str, Any], key: str) -> float:
    """The number at dotted ``key`` in ``record`` (:func:`lookup`, :func:`as_number`); NaN when missing."""
    return as_number(lookup(record, key))


def _scalar(value: Any) -> Any:
    return NONFINITE.get(value, value) if isinstance(value, str) else value


def _vector(value: Any) -> tuple[float, ...] | None:
    return None if value is None else tuple(_scalar(v) for v in value)


def _first(values: tuple[float, ...] | None) -> float | None:
    return float(values[0]) if values else None


def _entry(part: Mapping[str, Any] | None, key: str) -> Any:
    """``part[key]`` of a record's dict field, None when the field or the entry is missing."""
    return None if not part else part.get(key)


_V = TypeVar("_V")


class _Entry(Generic[_V]):
    """A read-only attribute of a record: entry ``key`` of its dict field ``part`` (:func:`_entry`)."""

    def __init__(self, part: str, key: str, doc: str) -> None:
        self.part, self.key, self.__doc__ = part, key, doc

    @overload
    def __get__(self, record: None, owner: type) -> _Entry[_V]: ...

    @overload
    def __get__(self, record: object, owner: type) -> _V | None: ...

    def __get__(self, record: object, owner: type) -> _Entry[_V] | _V | None:
        return self if record is None else _entry(getattr(record, self.part), self.key)


def ordered_json(keys: Iterable[str], known: Container[str], extra: Mapping[str, Any],
                 stored: Callable[[str], Any]) -> dict[str, Any]:
    """A record's stored object with ``keys`` in order: ``stored(key)`` for a ``known`` key, else ``extra``'s
    value (a key in neither left out); then the ``extra`` keys added after reading."""
    out = {key: stored(key) if key in known else extra[key] for key in keys if key in known or key in extra}
    for key, value in extra.items():
        out.setdefault(key, value)
    return out


_R = TypeVar("_R", bound="_Record")

#: The fields of a run's last measurement that its summary keeps under ``final``, in their stored order.
SUMMARY_FIELDS = ("step", "eigenvalues", "residuals", "converged", "preconditioned_eigenvalues", "trace", "grad_norm",
                  "train_loss", "train_acc", "test_loss", "test_acc", "thresholds")


@dataclass(frozen=True)
class _Record:
    """Shared reading and writing of the typed records: typed fields, ``extra`` and the stored key order."""

    KIND: ClassVar[str]
    _HEAD: ClassVar[tuple[str, ...]] = ("kind",)  # the stored keys before the fields
    extra: dict[str, Any] = field(default_factory=dict, kw_only=True)
    keys: tuple[str, ...] = field(default=(), repr=False, compare=False, kw_only=True)
    _VECTORS: ClassVar[frozenset[str]] = frozenset()
    _DICTS: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def _typed(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if f.name not in ("extra", "keys")]

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> Any:
        """The typed record of a stored (or freshly made) JSON record; raises :class:`DataError` for a record
        of another kind or without an integer ``step``."""
        if record_kind(record) != cls.KIND:
            raise DataError(f"a {record_kind(record)!r} record is not a {cls.KIND} record")
        record_step(record)
        return cls._read(record, cls._HEAD)

    @classmethod
    def _read(cls, record: Mapping[str, Any], skip: tuple[str, ...]) -> Any:
        typed = cls._typed()
        read = {**dict.fromkeys(cls._VECTORS, _vector), **dict.fromkeys(cls._DICTS, decode)}
        values = {name: read.get(name, _scalar)(record[name]) for name in typed if name in record}
        extra = {k: v for k, v in record.items() if k not in typed and k not in skip}
        return cls(**values, extra=extra, keys=tuple(record))

    @classmethod
    def made(cls: type[_R], fields: Mapping[str, Any]) -> _R:
        """The record of ``fields`` (typed field names, ``step`` among them), stored in their order with None
        values kept (:meth:`to_json`); list values of vector fields become tuples. A name that is not a typed
        field is a programming error (:class:`TypeError`), never kept in ``extra``."""
        typed = cls._typed()
        unknown = [name for name in fields if name not in typed]
        if unknown:
            raise TypeError(f"{cls.__name__} has no field {', '.join(map(repr, unknown))}")
        values: dict[str, Any] = {k: tuple(v) if k in cls._VECTORS and v is not None else v for k, v in fields.items()}
        return cls(**values, keys=(*cls._HEAD, *fields))

    def to_json(self) -> dict[str, Any]:
        """The record as stored: strict-JSON types, the stored key order when it was read from a record or made
        by :meth:`made` (typed fields that are None are left out of one constructed directly), ``extra`` kept."""
        return self._write(("kind", *[n for n in self._typed() if getattr(self, n) is not None]))

    def _write(self, made: tuple[str, ...]) -> dict[str, Any]:
        """The stored form with the keys read (or ``made`` and ``extra`` for a record made in code)."""
        known = {*self._typed(), *(() if "kind" in self.extra else ("kind",))}
        return ordered_json(self.keys or (*made, *self.extra), known, self.extra,
                            lambda key: self.KIND if key == "kind" else to_jsonable(getattr(self, key)))


@dataclass(frozen=True)
class Measurement(_Record):
    """One sharpness measurement at ``step`` (a ``"measurement"`` record; see
    :meth:`~sharpscope.track.SharpnessTracker.measure` for what each field holds). Floats are decoded
    (``math.nan``/``math.inf``); missing fields are None."""

    KIND: ClassVar[str] = MEASUREMENT
    _VECTORS: ClassVar[frozenset[str]] = frozenset({"eigenvalues", "residuals", "preconditioned_eigenvalues",
                                                   "preconditioned_residuals"})
    _DICTS: ClassVar[frozenset[str]] = frozenset({"trace", "thresholds", "cost", "settings", "errors", "alignment",
                                                 "sharpness"})

    step: int
    warm_start: bool | None = None
    train_loss: float | None = None
    train_acc: float | None = None
    test_loss: float | None = None
    test_acc: float | None = None
    test_correct: dict[str, Any] | None = None
    eigenvalues: tuple[float, ...] | None = None
    residuals: tuple[float, ...] | None = None
    converged: bool | None = None
    hvps: int | None = None
    seconds: float | None = None
    lanczos_steps: int | None = None
    preconditioned_eigenvalues: tuple[float, ...] | None = None
    preconditioned_residuals: tuple[float, ...] | None = None
    preconditioned_hvps: int | None = None
    trace: dict[str, Any] | None = None
    sharpness: dict[str, Any] | None = None
    grad_norm: float | None = None
    thresholds: dict[str, Any] | None = None
    cost: dict[str, Any] | None = None
    settings: dict[str, Any] | None = None
    errors: dict[str, str] | None = None
    alignment: dict[str, Any] | None = None

    @property
    def lambda_max(self) -> float | None:
        """The top Hessian eigenvalue, or None when not measured."""
        return _first(self.eigenvalues)

    @property
    def preconditioned_lambda_max(self) -> float | None:
        """The top eigenvalue of ``P⁻¹H``, or None when not measured."""
        return _first(self.preconditioned_eigenvalues)

    trace_estimate = _Entry[float]("trace", "estimate", "The trace estimate, or None when not measured.")
    trace_stderr = _Entry[float]("trace", "stderr", "The standard error of the trace estimate, or None when not "
                                 "measured.")
    trace_per_param = _Entry[float]("trace", "per_param", "The trace estimate over the parameter count, "
                                    "``tr(H)/d``, or None when not measured.")
    edge = _Entry[float]("thresholds", "edge", "The optimizer's threshold ``thresholds.edge`` (decoded), or None "
                         "when not recorded.")
    gd_edge = _Entry[float]("thresholds", "gd_edge", "GD's threshold ``2/η`` (``thresholds.gd_edge``), or None when "
                            "not recorded.")
    threshold_rule = _Entry[str]("thresholds", "rule", "The rule of the optimizer's threshold ``thresholds.rule`` "
                                 '(``"gd_edge"``, ``"adam_edge"``, ...), or None.')
    grad_cos = _Entry[list[float]]("alignment", "grad_cos", "``cos(g, v_i)`` of the gradient with each top "
                                   "eigenvector (``alignment.grad_cos``), or None.")
    grad_fraction = _Entry[float]("alignment", "grad_fraction", "``‖P_k g‖/‖g‖``, the gradient's fraction in the "
                                  "top eigenspace (``alignment.grad_fraction``), or None.")
    cost_hvps = _Entry[int]("cost", "hvps", "``cost.hvps`` as recorded (None when the record has no cost; "
                            ":attr:`total_hvps` counts that as 0).")
    cost_seconds = _Entry[float]("cost", "seconds", "``cost.seconds`` as recorded (None when the record has no cost).")

    def summary_part(self) -> dict[str, Any]:
        """The stored fields a run summary keeps of its last measurement (its ``final``), in
        :data:`SUMMARY_FIELDS` order."""
        stored = self.to_json()
        return {key: stored[key] for key in SUMMARY_FIELDS if key in stored}

    def eigenvalue(self, i: int) -> float | None:
        """The ``i``-th largest measured Hessian eigenvalue (``i = 0``: λ_max), or None when fewer were measured."""
        return float(self.eigenvalues[i]) if self.eigenvalues is not None and 0 <= i < len(self.eigenvalues) else None

    def sharpness_value(self, name: str) -> float | None:
        """The value of the sharpness measure ``name`` (``sharpness.<name>.value``), or None when not measured."""
        return _entry((self.sharpness or {}).get(name), "value")

    @property
    def total_hvps(self) -> int:
        """Hessian-vector products the whole measurement cost, ``cost.hvps`` (0 when not recorded)."""
        return int(self.cost_hvps or 0)

    @property
    def total_seconds(self) -> float:
        """Seconds the whole measurement took, ``cost.seconds`` (0 when not recorded)."""
        return float(self.cost_seconds or 0.0)


@dataclass(frozen=True)
class Alignment(_Record):
    """How much of the update from ``step`` lies in the top-eigenvector subspace measured at ``step``
    (an ``"alignment"`` record): ``update_norm = ‖θ_{t+1} − θ_t‖``, ``update_cos`` the cosine between the
    update and that subspace, ``update_fraction`` the fraction of ``‖Δθ‖²`` inside it."""

    KIND: ClassVar[str] = ALIGNMENT
    _VECTORS: ClassVar[frozenset[str]] = frozenset({"update_cos"})

    step: int
    update_norm: float | None = None
    update_cos: tuple[float, ...] | None = None
    update_fraction: float | None = None


@dataclass(frozen=True)
class SamBatch(_Record):
    """The mini-batch gradient that SAM's step from ``step`` normalised (a ``"sam_batch"`` record):
    ``batch_grad_norm`` its norm, ``sam_edge_batch`` the SAM-edge from that norm (None where no edge applies),
    ``derived_for`` the optimizer the edge was derived for, and ``batch_sharpness`` (when measured)
    ``{"eigenvalue", "residual", "converged", "examples", "hvps", "seconds"}``: λ_max of the loss on that
    mini-batch at ``θ_step``."""

    KIND: ClassVar[str] = SAM_BATCH
    _DICTS: ClassVar[frozenset[str]] = frozenset({"batch_sharpness"})

    step: int
    batch_grad_norm: float | None = None
    sam_edge_batch: float | None = None
    derived_for: str | None = None
    batch_sharpness: dict[str, Any] | None = None

    batch_lambda_max = _Entry[float]("batch_sharpness", "eigenvalue", "λ_max of the loss on the mini-batch "
                                     "(``batch_sharpness.eigenvalue``), or None when not measured.")


@dataclass(frozen=True)
class Divergence(_Record):
    """The step whose training loss was not finite (a ``"diverged"`` record): that loss ``train_loss``, its
    accuracy, and whether it was the ``"full"`` or a ``"mini-batch"`` loss (``batch``)."""

    KIND: ClassVar[str] = DIVERGED

    step: int
    train_loss: float | None = None
    train_acc: float | None = None
    batch: str | None = None


@dataclass(frozen=True)
class UpdateReading(_Record):
    """The curvature along the update from ``step`` (an ``"update_curvature"`` record, see
    ``docs/update-curvature.md``): ``kappa = uᵀHu/‖u‖²`` and ``kappa_preconditioned = uᵀHu/uᵀPu`` of
    ``u = θ_{t+1} − θ_t`` by ``method`` (``"hvp"`` or ``"fd"``, whose three losses and rounding bound are in
    ``fd``), with its ``cost`` in products and forward passes."""

    KIND: ClassVar[str] = UPDATE_CURVATURE
    _DICTS: ClassVar[frozenset[str]] = frozenset({"cost", "fd", "thresholds", "settings", "errors"})

    step: int
    method: str | None = None
    kappa: float | None = None
    kappa_preconditioned: float | None = None
    uHu: float | None = None
    uPu: float | None = None
    update_norm: float | None = None
    cost: dict[str, Any] | None = None
    fd: dict[str, Any] | None = None
    thresholds: dict[str, Any] | None = None
    settings: dict[str, Any] | None = None
    errors: dict[str, str] | None = None

    @property
    def hvps(self) -> int:
        """Hessian-vector products the reading took (``cost.hvps``; 0 when not recorded)."""
        return int((self.cost or {}).get("hvps") or 0)

    @property
    def forwards(self) -> int:
        """Forward passes over the probe set the reading took (``cost.forwards``; 0 when not recorded)."""
        return int((self.cost or {}).get("forwards") or 0)


@dataclass(frozen=True)
class RunSummary(_Record):
    """A run's ``summary.json`` (no ``"kind"`` key; see ``docs/run-directory.md``): how the run ended
    (``status``, ``step`` of ``steps_requested``, ``diverged_at_step`` with its ``nonfinite_loss``), the
    ``final`` measurement's main fields, ``max_sharpness`` ``{"value", "step"}``, the first step whose bounded
    sharpness reached its threshold, the measurements' total cost, the update-curvature readings, this
    session (``resumed_from_step``, ``seconds``, ``notes``), data, sharding, initialisation, last checkpoint
    and run directory. ``already_complete`` (never stored) marks a stored summary returned again.
    ``RunSummary.from_json(s).to_json() == s`` for every stored summary ``s``."""

    KIND: ClassVar[str] = "summary"
    _HEAD: ClassVar[tuple[str, ...]] = ()
    _DICTS: ClassVar[frozenset[str]] = frozenset({"final", "max_sharpness", "update_curvature", "session", "data",
                                                  "sharding", "init"})

    status: str | None = None
    step: int | None = None
    steps_requested: int | None = None
    recipe: str | None = None
    scale: str | None = None
    diverged_at_step: int | None = None
    nonfinite_loss: float | None = None
    measurements: int = 0
    final: dict[str, Any] = field(default_factory=dict)
    max_sharpness: dict[str, Any] | None = None
    first_step_at_or_above_edge: int | None = None
    hvps_total: int = 0
    measure_seconds_total: float = 0.0
    update_curvature: dict[str, Any] | None = None
    session: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] | None = None
    sharding: dict[str, Any] | None = None
    init: dict[str, Any] | None = None
    checkpoint: str | None = None
    run_dir: str | None = None
    already_complete: bool | None = None

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> RunSummary:
        """The typed summary of a stored one (any field may be missing: None); :class:`DataError` for a
        ``status`` that is not a string or a ``step`` that is not an integer."""
        if not isinstance(record, Mapping):
            raise DataError(f"a run summary must be a JSON object, got {type(record).__name__}")
        status, step = record.get("status"), record.get("step")
        if not isinstance(status, (str, type(None))) or isinstance(step, bool) or not isinstance(step, (int, type(None))):
            raise DataError(f"a run summary needs a string 'status' and an integer 'step', got {status!r} and {step!r}")
        return cls._read(record, ())

    def to_json(self) -> dict[str, Any]:
        """The summary as stored (``already_complete`` only when set)."""
        return self._write(tuple(n for n in self._typed() if n != "already_complete" or self.already_complete is not None))

    def returned_again(self) -> RunSummary:
        """The summary marked ``already_complete`` (returned again for a run that had finished), that key last."""
        keys = self.keys and (*[k for k in self.keys if k != "already_complete"], "already_complete")
        return dataclasses.replace(self, already_complete=True, keys=keys)

    @property
    def final_measurement(self) -> Measurement | None:
        """The last measurement's fields kept in ``final`` as a :class:`Measurement` (None when nothing was measured;
        a ``final`` without its ``step`` takes the summary's)."""
        final = {"step": self.step, **self.final}
        return Measurement.from_json(final) if self.final and isinstance(final["step"], int) else None

    seconds = _Entry[float]("session", "seconds", "Seconds this session trained (``session.seconds``).")
    resumed_from_step = _Entry[int]("session", "resumed_from_step", "The step this session resumed from, or None "
                                    "for a fresh run.")

    @property
    def notes(self) -> list[str]:
        """What this session noted (repairs, resumes)."""
        return list(self.session.get("notes") or [])

    @property
    def test_examples(self) -> int | None:
        """The size of the test set (``data.test.examples``), or None without one."""
        return ((self.data or {}).get("test") or {}).get("examples")


#: The typed record of each kind that ``metrics.jsonl`` holds.
RunRecord = Measurement | Alignment | SamBatch | UpdateReading | Divergence
RECORD_TYPES: dict[str, type[RunRecord]] = {t.KIND: t for t in (Measurement, Alignment, SamBatch, UpdateReading,
                                                                Divergence)}


def typed_record(record: RunRecord | Mapping[str, Any]) -> RunRecord | None:
    """``record`` as its typed record (itself when typed already), or None for a stored record of a kind
    without one (any kind may be written by a sink's caller); :class:`DataError` for a known kind without an
    integer ``step``."""
    if isinstance(record, _Record):
        return record
    kind = RECORD_TYPES.get(record_kind(record))
    return None if kind is None else kind.from_json(record)


def stored_record(record: RunRecord | Mapping[str, Any]) -> dict[str, Any]:
    """``record`` as stored: :meth:`to_json` of a typed record, a copy of a mapping."""
    return record.to_json() if isinstance(record, _Record) else dict(record)
