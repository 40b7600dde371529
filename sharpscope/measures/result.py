"""The result of one sharpness measure: its value, uncertainty, cost and settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
    settings: dict[str, object] = field(default_factory=dict)
    convergence: dict[str, object] | None = None
    details: dict[str, object] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {"name": self.name, "value": self.value, "stderr": self.stderr, "forwards": self.forwards,
                "backwards": self.backwards, "seconds": self.seconds, "convergence": self.convergence,
                "details": self.details, "settings": self.settings}
