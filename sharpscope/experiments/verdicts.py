"""Verdicts on a study's claims, from intervals (:mod:`sharpscope.experiments.statistics`).

The labels, in :data:`VERDICTS`:

* ``holds`` — every part of the criterion passes, beyond the noise (a difference: its interval lies on the
  claimed side of 0).
* ``partly`` — some parts pass beyond the noise and the rest do not or cannot be decided.
* ``inconclusive`` — the interval contains 0 and does not exclude the effect the claim is about; reported
  with the minimum detectable effect (MDE) at the study's seeds and noise. Fewer than :data:`MIN_SEEDS`
  seeds in an arm is always inconclusive.
* ``not testable at this scale`` — the runs cannot test the claim (a reason is given: the criterion is met
  at initialisation, the quantity is not smooth, the arms were not run at comparable settings, ...).
* ``does not hold`` — the claimed direction is excluded (the interval lies on the other side of 0, or
  excludes the effect of interest).
* ``not run`` — no evidence was collected.

A criterion that a control or the initial state also meets is not a pass (:func:`with_controls`,
:func:`judge_threshold`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sharpscope.errors import ConfigError
from sharpscope.experiments.statistics import Difference
from sharpscope.validation import check_choice

HOLDS, PARTLY, INCONCLUSIVE = "holds", "partly", "inconclusive"
NOT_TESTABLE, DOES_NOT_HOLD, NOT_RUN = "not testable at this scale", "does not hold", "not run"
VERDICTS: tuple[str, ...] = (HOLDS, PARTLY, INCONCLUSIVE, NOT_TESTABLE, DOES_NOT_HOLD, NOT_RUN)

MIN_SEEDS = 3
"""The fewest finite seeds per arm for a comparison to be decided either way."""

__all__ = ["DOES_NOT_HOLD", "HOLDS", "INCONCLUSIVE", "MIN_SEEDS", "NOT_RUN", "NOT_TESTABLE", "PARTLY", "VERDICTS",
           "Verdict", "combine", "judge_difference", "judge_equivalence", "judge_non_inferiority", "judge_threshold", "with_controls"]


@dataclass(frozen=True)
class Verdict:
    """A label from :data:`VERDICTS`, the reason for it, and the minimum detectable effect where one applies."""

    label: str
    reason: str = ""
    mde: float | None = None

    def __post_init__(self) -> None:
        check_choice("label", self.label, VERDICTS)

    @property
    def passes(self) -> bool:
        """Whether the label is :data:`HOLDS`."""
        return self.label == HOLDS

    def text(self, digits: int = 3) -> str:
        """``"inconclusive (MDE 2.1): <reason>"``: the label, the MDE for an inconclusive verdict, the reason."""
        out = self.label
        if self.label == INCONCLUSIVE and self.mde is not None and math.isfinite(self.mde):
            out += f" (MDE {self.mde:.{digits}g})"
        return f"{out}: {self.reason}" if self.reason else out

    def to_json(self) -> dict[str, Any]:
        """``{"label", "reason", "mde"}``."""
        return {"label": self.label, "reason": self.reason, "mde": self.mde}

    def as_result(self) -> dict[str, Any]:
        """``{"verdict", "reason", "mde"}``: the verdict as a claim's result stores it."""
        return {"verdict": self.label, "reason": self.reason, "mde": self.mde}


def _mde(mde: float | None) -> float | None:
    return None if mde is None or not math.isfinite(mde) else float(mde)


def _interval(diff: Difference, what: str) -> str:
    """``a − b = 1.2, 95% interval [0.3, 2.1]``: how every verdict on a difference quotes it."""
    return f"{what} = {diff.estimate:.4g}, {100 * diff.level:g}% interval [{diff.low:.4g}, {diff.high:.4g}]"


def _unjudgeable(diff: Difference, what: str, mde: float | None) -> Verdict | None:
    """Inconclusive when an arm has fewer than :data:`MIN_SEEDS` values or the difference has no spread."""
    if min(diff.n_a, diff.n_b) < MIN_SEEDS:
        return Verdict(INCONCLUSIVE, f"fewer than {MIN_SEEDS} seeds (a: {diff.n_a}, b: {diff.n_b})", _mde(mde))
    if not diff.defined:
        return Verdict(INCONCLUSIVE, f"{what} = {diff.estimate:.4g} with no variation to judge it by", _mde(mde))
    return None


def judge_difference(diff: Difference, *, better: str, mde: float | None = None,
                     effect_of_interest: float | None = None, what: str = "a − b") -> Verdict:
    """The claim "``a`` is better than ``b``" (``better="lower"``: ``a − b < 0``; ``"higher"``: ``> 0``) from the
    interval of ``a − b``: holds when the interval lies on the better side of 0; does not hold when it lies on
    the worse side, or contains 0 but excludes an improvement of ``effect_of_interest`` (a positive size);
    otherwise inconclusive with ``mde``. Fewer than :data:`MIN_SEEDS` values in an arm: inconclusive."""
    sign = {"lower": -1, "higher": 1}[check_choice("better", better, ("lower", "higher"))]
    if effect_of_interest is not None and not effect_of_interest > 0:
        raise ConfigError(f"effect_of_interest must be > 0, got {effect_of_interest!r}", argument="effect_of_interest")
    if (unjudgeable := _unjudgeable(diff, what, mde)) is not None:
        return unjudgeable
    interval = _interval(diff, what)
    side = diff.side()
    if side == sign:
        return Verdict(HOLDS, interval)
    if side == -sign:
        return Verdict(DOES_NOT_HOLD, f"{interval}: the other direction")
    best_end = diff.high if sign > 0 else -diff.low  # the largest improvement the interval allows
    if effect_of_interest is not None and best_end < effect_of_interest:
        return Verdict(DOES_NOT_HOLD, f"{interval} excludes an improvement of {effect_of_interest:.4g}")
    return Verdict(INCONCLUSIVE, f"{interval} contains 0", _mde(mde))


def judge_non_inferiority(diff: Difference, *, margin: float, better: str = "higher", mde: float | None = None,
                          what: str = "a − b") -> Verdict:
    """The claim "``a`` is no worse than ``b`` by more than ``margin``" (``margin ≥ 0``, in the data's units): holds
    when the whole interval of ``a − b`` is above ``−margin`` (below ``margin`` when lower is better), does not
    hold when it is wholly beyond it, else inconclusive. With ``margin = 0`` two copies of one arm pass with
    probability ``(1 − level)/2``."""
    sign = {"lower": -1, "higher": 1}[check_choice("better", better, ("lower", "higher"))]
    if not (isinstance(margin, (int, float)) and math.isfinite(margin) and margin >= 0):
        raise ConfigError(f"margin must be a finite number >= 0, got {margin!r}", argument="margin")
    if (unjudgeable := _unjudgeable(diff, what, mde)) is not None:
        return unjudgeable
    interval = _interval(diff, what)
    worst, best = (diff.low, diff.high) if sign > 0 else (-diff.high, -diff.low)
    if worst > -margin:
        return Verdict(HOLDS, f"{interval}, above the margin −{margin:.4g}" if sign > 0 else
                       f"{interval}, below the margin {margin:.4g}")
    if best < -margin:
        return Verdict(DOES_NOT_HOLD, f"{interval}: worse by more than the margin {margin:.4g}")
    return Verdict(INCONCLUSIVE, f"{interval} reaches past the margin {margin:.4g}", _mde(mde))


def judge_threshold(met: bool, *, reason: str, met_at_start: bool = False, met_by_control: bool = False) -> Verdict:
    """A criterion that is a fixed threshold (no comparison): holds when ``met``, unless the initial state
    (``met_at_start``) or a control (``met_by_control``) meets it too, in which case the runs cannot tell the
    method's effect apart: not testable at this scale."""
    if met and met_at_start:
        return Verdict(NOT_TESTABLE, f"{reason}; already met at initialisation, before the method acted")
    if met and met_by_control:
        return Verdict(NOT_TESTABLE, f"{reason}; the control meets it too")
    return Verdict(HOLDS if met else DOES_NOT_HOLD, reason)


def combine(parts: Mapping[str, Verdict]) -> Verdict:
    """One verdict for a criterion that is the conjunction of ``parts``: all hold → holds; some hold → partly;
    none holds and one does not hold → does not hold; else one inconclusive → inconclusive (the smallest
    MDE); else not testable. Not-run parts are left out (all not run → not run)."""
    run = {k: v for k, v in parts.items() if v.label != NOT_RUN}
    if not run:
        return Verdict(NOT_RUN, "; ".join(f"{k}: {v.reason}" for k, v in parts.items() if v.reason))
    labels = [v.label for v in run.values()]
    reason = "; ".join(f"{k}: {v.text()}" for k, v in run.items())
    if all(label == HOLDS for label in labels):
        return Verdict(HOLDS, reason)
    if HOLDS in labels or PARTLY in labels:
        return Verdict(PARTLY, reason)
    if DOES_NOT_HOLD in labels:
        return Verdict(DOES_NOT_HOLD, reason)
    if INCONCLUSIVE in labels:
        mdes = [v.mde for v in run.values() if v.label == INCONCLUSIVE and v.mde is not None]
        return Verdict(INCONCLUSIVE, reason, min(mdes) if mdes else None)
    if NOT_TESTABLE in labels:
        return Verdict(NOT_TESTABLE, reason)
    return Verdict(DOES_NOT_HOLD, reason)


def with_controls(main: Verdict, controls: Mapping[str, Verdict]) -> Verdict:
    """``main`` (the method against its comparison arm) counts only if the method also beats every control:
    a pass that a control matches is no pass. ``main`` not holding is returned as it is; otherwise every
    control must hold, one inconclusive makes the claim inconclusive and one that does not hold (the control
    does as well) makes it not hold. No control: ``main``."""
    if main.label != HOLDS or not controls:
        return main
    failed = {k: v for k, v in controls.items() if v.label != HOLDS}
    if not failed:
        return main
    reason = f"beats the comparison arm ({main.reason}), but not every control: " + "; ".join(
        f"{k}: {v.text()}" for k, v in failed.items())
    if any(v.label == INCONCLUSIVE for v in failed.values()):
        mdes = [v.mde for v in failed.values() if v.mde is not None]
        return Verdict(INCONCLUSIVE, reason, min(mdes) if mdes else None)
    if any(v.label == NOT_TESTABLE for v in failed.values()):
        return Verdict(NOT_TESTABLE, reason)
    return Verdict(DOES_NOT_HOLD, reason)


def judge_equivalence(diff: Difference, *, margin: float, mde: float | None = None, what: str = "a − b") -> Verdict:
    """The claim "``a`` and ``b`` differ by less than ``margin``" (``margin > 0``): holds when the whole interval
    lies inside ``(−margin, margin)`` (two one-sided tests), does not hold when it lies wholly outside it,
    else inconclusive."""
    if not (isinstance(margin, (int, float)) and math.isfinite(margin) and margin > 0):
        raise ConfigError(f"margin must be a finite number > 0, got {margin!r}", argument="margin")
    interval = _interval(diff, what)
    if not diff.defined:
        return Verdict(INCONCLUSIVE, f"{what} = {diff.estimate:.4g} with no interval", _mde(mde))
    if -margin < diff.low and diff.high < margin:
        return Verdict(HOLDS, f"{interval}, inside ±{margin:.4g}")
    if diff.low >= margin or diff.high <= -margin:
        return Verdict(DOES_NOT_HOLD, f"{interval}, outside ±{margin:.4g}")
    return Verdict(INCONCLUSIVE, f"{interval} reaches past ±{margin:.4g}", _mde(mde))
