"""Series read along a run's records: rolling medians, and the steps holding both a measurement and a
mini-batch SAM record."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sharpscope.io.records import is_measurement, record_kind

ROLLING_WINDOW = 10  # checkpoints in the rolling median of the mini-batch edge ratios


def rolling_median(values: Sequence[float], window: int) -> list[float]:
    """The median of each value with the ``window − 1`` before it (fewer at the start)."""
    return [statistics.median(values[max(0, i - window + 1): i + 1]) for i in range(len(values))]


def sam_batch_pairs(records: Iterable[Mapping[str, Any]]) -> list[tuple[int, Mapping[str, Any], Mapping[str, Any]]]:
    """``(step, measurement, "sam_batch" record)`` for every step holding both, in step order."""
    full, batch = {}, {}
    for r in records:
        if is_measurement(r):
            full[r["step"]] = r
        elif record_kind(r) == "sam_batch":
            batch[r["step"]] = r
    return [(t, full[t], batch[t]) for t in sorted(set(full) & set(batch))]
