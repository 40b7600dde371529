"""The result of one sharpness measure: its value, uncertainty, cost and settings."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from sharpscope.errors import ConfigError


@dataclass(frozen=True)
class SharpnessResult:
    """One sharpness measure at the current weights.

    ``value`` is the measure (its definition in ``docs/measures.md``); ``stderr`` its Monte-Carlo or
    between-batch standard error where it is random (None for a deterministic or ascent-based value);
    ``convergence`` the record of a gradient ascent (steps, restarts, gain of the last steps), None
    otherwise. ``forwards``/``backwards`` count model calls on one batch each (forward passes and
    backward passes; a forward-mode product counts as a forward); ``details`` holds measure-specific
    numbers (the loss at ``w``, PAC-Bayes ``σ``, per-batch values, ...).
    """

    name: str
    value: float
    stderr: float | None
    forwards: int
    backwards: int
    seconds: float
    convergence: dict[str, object] | None = None
    details: dict[str, object] = field(default_factory=dict)
    settings: dict[str, object] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (a deep copy of the fields, in order)."""
        return asdict(self)


def measure_value(entry: Any, name: str = "measure") -> float:
    """A measure's number: a plain number, a mapping with ``value`` (a stored result) or an object with a
    ``value`` attribute (a :class:`~sharpscope.measures.SharpnessResult`)."""
    raw = entry.get("value") if isinstance(entry, Mapping) else getattr(entry, "value", entry)
    try:  # non-finite values stored in JSON come back as the strings "NaN", "Infinity"
        if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
            raise ValueError
        return float(raw)
    except ValueError:
        raise ConfigError(f"measure {name!r} must be a number, a dict with 'value' or a result with .value, "
                          f"got {raw!r}") from None
