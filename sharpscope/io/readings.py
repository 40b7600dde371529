"""Readings of compared models (:class:`ModelReading`), two compared (:class:`Pair`), the judged differences over
pairs (:class:`PairedComparison`) and the results they make up (:class:`Contrast`, :class:`A3Results`,
:class:`A4Results`) of the ``escape-a3`` and ``escape-a4`` studies: each a :class:`StoredRecord`, stored as the JSON
object of its fields in their order (``to_dict``), read back by ``from_dict`` with the stored non-finite strings
decoded."""

from __future__ import annotations

import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

from sharpscope.io.jsonsafe import decode

BULKY = ("test_correct", "trace_samples")
"""The members of a :class:`ModelReading` a brief one leaves out: the packed test predictions and the probe
values."""

_R = TypeVar("_R", bound="StoredRecord")


def _decoded(kind: Any, value: Any) -> Any:
    """The stored ``value`` read as type ``kind``: a record by its ``from_dict``, a list or mapping item by item (an
    ``int`` key from its string), anything else (a value of another shape too) with the stored non-finite strings
    decoded."""
    if get_origin(kind) in (Union, types.UnionType):
        kind = next(a for a in get_args(kind) if a is not type(None))
    origin, args = get_origin(kind), get_args(kind)
    if isinstance(value, Mapping) and isinstance(kind, type) and issubclass(kind, StoredRecord):
        return kind.from_dict(value)
    if isinstance(value, list) and origin in (list, Sequence):
        return [_decoded(args[0], v) for v in value]
    if isinstance(value, Mapping) and origin in (dict, Mapping):
        return {int(k) if args[0] is int else k: _decoded(args[1], v) for k, v in value.items()}
    return decode(value)


def _encoded(value: Any) -> Any:
    """The stored form of ``value``: a record's ``to_dict`` (a reading brief), a mapping with string keys, a list
    item by item, anything else as it is."""
    if isinstance(value, ModelReading):
        return value.to_dict(brief=True)
    if isinstance(value, StoredRecord):
        return value.to_dict()
    if isinstance(value, Mapping):
        return {str(k): _encoded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encoded(v) for v in value]
    return value


@dataclass(frozen=True)
class StoredRecord:
    """A record stored as the JSON object of its fields in their order; a record, list or mapping (``int`` keys as
    strings) among them stored the same way, a reading brief."""

    @classmethod
    def from_dict(cls: type[_R], stored: Mapping[str, Any]) -> _R:
        """The record of a stored one (a missing member is None)."""
        hints = get_type_hints(cls)
        return cls(**{f.name: _decoded(hints[f.name], stored.get(f.name)) for f in fields(cls)})

    def to_dict(self) -> dict[str, Any]:
        """The stored record."""
        return {f.name: _encoded(getattr(self, f.name)) for f in fields(self)}


@dataclass(frozen=True)
class ModelReading(StoredRecord):
    """Model ``run`` at checkpoint ``step`` read once: tr(H) by Hutch++ (``trace`` ± ``trace_stderr``), the
    quadratic forms ``z_iᵀHz_i`` of the probes every model shares (``trace_samples``, their mean ``trace_paired``),
    λ_max, the exact Jacobian trace ``(1/n) Σ_i ‖∂f(x_i)/∂w‖_F²``, training loss and accuracy on the
    ``probe_examples`` images, test accuracy on ``test_examples`` and which of them it classifies right
    (``test_correct``, packed bits); ``hvps`` and ``seconds`` it took at the reading sizes ``settings``. A brief
    reading (as a study summary stores it) has no :data:`BULKY` members."""

    run: str
    step: int
    checkpoint: dict[str, Any] | None
    train_loss: float
    train_acc: float | None
    test_acc: float | None
    test_correct: dict[str, Any] | None
    trace: float
    trace_stderr: float
    lambda_max: float
    jacobian_trace: float
    trace_samples: Sequence[float] | None
    trace_paired: float
    hvps: int
    seconds: float
    probe_examples: int
    settings: dict[str, Any] | None
    test_examples: int | None
    errors: Any

    def to_dict(self, *, brief: bool = False) -> dict[str, Any]:
        """The stored reading; ``brief``: without the :data:`BULKY` members."""
        return {k: v for k, v in super().to_dict().items() if not (brief and k in BULKY)}


@dataclass(frozen=True)
class Pair(StoredRecord):
    """Two readings compared, ``sa`` − ``arm`` (in ``escape-a4``: the smaller perturbation batch − the larger);
    a pair matched at equal loss says ``matched`` how, the arm's run ``status`` and the ``loss_ratio``
    L_arm / L_SA. Stored in that order, the readings brief."""

    matched: str | None = field(default=None, kw_only=True)
    status: str | None = field(default=None, kw_only=True)
    loss_ratio: float | None = field(default=None, kw_only=True)
    sa: ModelReading
    arm: ModelReading


@dataclass(frozen=True)
class PairedComparison(StoredRecord):
    """The differences of one quantity over pairs, one ``per_minimizer``, judged: their mean ``difference``, its
    95% ``interval``, standard error ``se`` with ``df`` degrees of freedom, ``p_value`` and ``method``, the
    minimum detectable effect ``mde``, the ``verdict`` label with its ``reason``, and the ``estimator_se`` the
    minimizers do not vary."""

    per_minimizer: Sequence[float]
    difference: float
    interval: Sequence[float]
    se: float
    df: float
    p_value: float
    method: str
    mde: float | None
    verdict: str
    reason: str
    estimator_se: float


@dataclass(frozen=True)
class Contrast(StoredRecord):
    """One contrast (SA − an arm, or B = a − B = b) judged in each quantity (``judged``: quantity ↦
    :class:`PairedComparison`) with what it was judged over: the ``pairs`` of readings (``escape-a3``), the
    per-minimizer ``train_loss`` differences (``escape-a4``, at the end), or the ``steps`` the main batch was read
    at and each pair's ``loss_ratio`` (at equal loss); or why it was ``skipped``. Stored flat: the members it has
    in this order, the comparisons in place of ``judged``."""

    pairs: list[Pair] | None = None
    judged: dict[str, PairedComparison] = field(default_factory=dict)
    train_loss: list[float] | None = None
    steps: list[int] | None = None
    loss_ratio: list[float] | None = None
    skipped: str | None = None

    @classmethod
    def from_dict(cls, stored: Mapping[str, Any]) -> Contrast:
        """The contrast of a stored one: every member not a field is a quantity's comparison."""
        members = {f.name for f in fields(cls)}
        judged = {q: c for q, c in stored.items() if q not in members}
        return super().from_dict({k: v for k, v in stored.items() if k in members} | {"judged": judged})

    def to_dict(self) -> dict[str, Any]:
        """The stored contrast."""
        stored: dict[str, Any] = {}
        for name, value in super().to_dict().items():
            if name == "judged":
                stored.update(value)
            elif value is not None:
                stored[name] = value
        return stored


@dataclass(frozen=True)
class A3Results(StoredRecord):
    """The numbers of ``escape-a3`` (its verdict is stored beside them): each bad minimizer's reading
    (``minimizers``, by seed) and SA against each arm at equal loss (``comparisons``, arm ↦ :class:`Contrast` over
    the minimizers' pairs)."""

    minimizers: dict[int, ModelReading]
    comparisons: dict[str, Contrast]


@dataclass(frozen=True)
class A4Results(StoredRecord):
    """The numbers of ``escape-a4`` (its verdict is stored beside them): the perturbation ``batches`` (the last is the
    main batch), the ``minimizers`` and their readings (``start``), each run's end (``readings``: form ↦ B ↦ one per
    minimizer), and per form the contrasts between batches at the end (``comparisons``) and at equal loss
    (``at_equal_loss``), ``"<a>-<b>"`` ↦ :class:`Contrast` of B = a − B = b."""

    batches: list[int]
    minimizers: list[int]
    start: list[ModelReading]
    readings: dict[str, dict[int, list[ModelReading]]]
    comparisons: dict[str, dict[str, Contrast]]
    at_equal_loss: dict[str, dict[str, Contrast]]
