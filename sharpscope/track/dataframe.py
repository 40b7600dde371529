"""A run directory's ``metrics.jsonl`` as a pandas DataFrame (pandas is optional)."""

from __future__ import annotations

import os
from typing import Any

from sharpscope.errors import ConfigError
from sharpscope.io import jsonsafe
from sharpscope.io.records import record_kind
from sharpscope.io.rundir import RunDirectory
from sharpscope.track.tags import flatten_record


def metrics_dataframe(run: RunDirectory | str | os.PathLike[str], *, kind: str | None = None) -> Any:
    """One row per record of ``metrics.jsonl`` (in file order), one column per flattened key
    (:func:`~sharpscope.track.tags.flatten_record`: ``eigenvalues.0``, ``trace.estimate``, ...).

    ``kind`` keeps only records of that kind (``"measurement"``, ``"alignment"``, ...). Stored
    non-finite strings come back as floats in otherwise numeric columns; absent keys are missing
    values. Needs pandas (``pip install sharpscope[pandas]``).
    """
    try:
        import pandas as pd
    except ImportError:
        raise ConfigError("metrics_dataframe needs pandas: pip install 'sharpscope[pandas]'") from None
    run = run if isinstance(run, RunDirectory) else RunDirectory(run)
    if not run.path.is_dir():
        raise ConfigError(f"{run.path}: no such run directory")
    records = run.read_metrics(torn_ok=True)
    if kind is not None:
        records = [r for r in records if record_kind(r) == kind]
    frame = pd.DataFrame([flatten_record(r) for r in records])
    for column in frame.columns:
        values = frame[column]
        present = values.dropna()
        numeric = [isinstance(v, (int, float)) and not isinstance(v, bool) for v in present]
        stored = [isinstance(v, str) and v in jsonsafe.NONFINITE for v in present]
        if any(stored) and all(a or b for a, b in zip(numeric, stored)):
            frame[column] = pd.to_numeric([jsonsafe.as_float(v) if isinstance(v, str) else v for v in values])
    return frame
