"""Readings of compared models (:class:`ModelReading`), two compared (:class:`Pair`) and the judged differences over
pairs (:class:`PairedComparison`) of the ``escape-a3`` and ``escape-a4`` studies; each stored as the JSON object of its
fields in their order (``to_dict``), read back by ``from_dict`` with the stored non-finite strings decoded."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, TypeVar

from sharpscope.io.jsonsafe import decode

BULKY = ("test_correct", "trace_samples")
"""The members of a :class:`ModelReading` a brief one leaves out: the packed test predictions and the probe
values."""

_S = TypeVar("_S", "ModelReading", "PairedComparison")


def _read(cls: type[_S], stored: Mapping[str, Any]) -> _S:
    """The record ``cls`` of the stored object ``stored`` (a missing member is None)."""
    return cls(**{f.name: decode(stored.get(f.name)) for f in fields(cls)})


def _write(record: ModelReading | PairedComparison, leave_out: Sequence[str] = ()) -> dict[str, Any]:
    """The stored object of ``record``: its fields in their order, but those in ``leave_out``."""
    return {f.name: getattr(record, f.name) for f in fields(record) if f.name not in leave_out}


@dataclass(frozen=True)
class ModelReading:
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

    @classmethod
    def from_dict(cls, stored: Mapping[str, Any]) -> ModelReading:
        """The reading of a stored (or brief) reading."""
        return _read(cls, stored)

    def to_dict(self, *, brief: bool = False) -> dict[str, Any]:
        """The stored reading; ``brief``: without the :data:`BULKY` members."""
        return _write(self, BULKY if brief else ())


@dataclass(frozen=True)
class Pair:
    """Two readings compared, ``sa`` − ``arm`` (in ``escape-a4``: the smaller perturbation batch − the larger);
    a pair matched at equal loss says ``matched`` how, the arm's run ``status`` and the ``loss_ratio``
    L_arm / L_SA."""

    sa: ModelReading
    arm: ModelReading
    matched: str | None = None
    status: str | None = None
    loss_ratio: float | None = None

    @classmethod
    def from_dict(cls, stored: Mapping[str, Any]) -> Pair:
        """The pair of a stored one (brief readings)."""
        return cls(ModelReading.from_dict(stored["sa"]), ModelReading.from_dict(stored["arm"]), stored.get("matched"),
                   stored.get("status"), decode(stored.get("loss_ratio")))

    def to_dict(self) -> dict[str, Any]:
        """The stored pair: how it was matched, then the two brief readings."""
        return {"matched": self.matched, "status": self.status, "loss_ratio": self.loss_ratio,
                "sa": self.sa.to_dict(brief=True), "arm": self.arm.to_dict(brief=True)}


@dataclass(frozen=True)
class PairedComparison:
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

    @classmethod
    def from_dict(cls, stored: Mapping[str, Any]) -> PairedComparison:
        """The comparison of a stored one."""
        return _read(cls, stored)

    def to_dict(self) -> dict[str, Any]:
        """The stored comparison."""
        return _write(self)


def stored_comparisons(judged: Mapping[str, PairedComparison]) -> dict[str, dict[str, Any]]:
    """Each quantity's stored comparison of ``judged`` (quantity ↦ :class:`PairedComparison`)."""
    return {q: c.to_dict() for q, c in judged.items()}
