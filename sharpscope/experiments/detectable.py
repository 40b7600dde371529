"""The smallest effect a study can detect, computed before it runs.

Each claim that compares arms over seeds states an :class:`Assumption`: the quantity compared, the seeds of
each arm (from the study's scale), an assumed seed standard deviation for each arm, the noise that the
seeds do not vary (the trace estimator's error, the test set's binomial error) and where the assumption
comes from. :func:`plan` turns them into minimum detectable effects
(:func:`~sharpscope.experiments.statistics.minimum_detectable_effect`: Welch's 95% interval, 80% power);
a single reading (the bad minimizer, the start of a run) is an arm without seed spread (``sd = 0``, its
error in ``estimator_se``); an arm of one seed whose spread is assumed has no MDE (the verdict is
inconclusive by rule). :func:`lines` gives one printable line per claim; the framework prints them before
the first stage and stores the plan in the study summary (``detectable``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from sharpscope.experiments import statistics

__all__ = ["Assumption", "lines", "plan"]


@dataclass(frozen=True)
class Assumption:
    """One comparison of a claim: ``quantity`` of arm a − arm b with ``n_a``/``n_b`` seeds, assumed seed standard
    deviations ``sd_a``/``sd_b``, ``estimator_se`` the noise the seeds do not vary, ``source`` of the numbers."""

    claim: str
    quantity: str
    n_a: int
    n_b: int
    sd_a: float
    sd_b: float
    estimator_se: float
    source: str


def _mde(a: Assumption) -> tuple[float | None, str]:
    single = [n for n, sd in ((a.n_a, a.sd_a), (a.n_b, a.sd_b)) if n < 2 and sd > 0]
    if single:
        return None, "an arm of one seed whose spread is assumed: no interval from seeds"
    if a.sd_a == 0 and a.sd_b == 0 and a.estimator_se == 0:
        return None, "no noise assumed"
    # a single reading (n = 1, sd 0) adds no variance and no degrees of freedom: any n ≥ 2 with sd 0 says so
    mde = statistics.minimum_detectable_effect(n_a=max(a.n_a, 2), n_b=max(a.n_b, 2), sd_a=a.sd_a, sd_b=a.sd_b,
                                               estimator_se=a.estimator_se)
    return mde, ""


def plan(assumptions: Sequence[Assumption]) -> list[dict[str, Any]]:
    """Each assumption with its minimum detectable effect ``mde`` (None with a ``note`` where there is none) and
    the ``assumption`` in words."""
    out = []
    for a in assumptions:
        mde, note = _mde(a)
        text = (f"{a.n_a} v {a.n_b} seeds, seed sd {a.sd_a:.3g} v {a.sd_b:.3g}, unvaried noise {a.estimator_se:.3g}; "
                f"{a.source}")
        out.append({**asdict(a), "mde": mde, "note": note, "assumption": text, "power": 0.8,
                    "level": statistics.LEVEL})
    return out


def lines(entries: Sequence[Mapping[str, Any]]) -> list[str]:
    """One line per claim: ``"detectable before running: A3: tr(H) at the end ≥ 9.7 (…); test accuracy ≥ …"``."""
    claims: dict[str, list[str]] = {}
    for e in entries:
        mde = e.get("mde")
        value = f"≥ {mde:.3g}" if isinstance(mde, (int, float)) and math.isfinite(mde) else f"none ({e.get('note')})"
        claims.setdefault(str(e["claim"]), []).append(f"{e['quantity']} {value} ({e['assumption']})")
    return [f"detectable before running: {claim}: " + "; ".join(parts) for claim, parts in claims.items()]
