"""Strict JSON for run directories: no ``NaN``/``Infinity`` tokens, ever.

Python's ``json`` writes ``NaN`` and ``Infinity`` by default, which strict parsers (JavaScript,
``jq``, most other languages) reject. Records are passed through :func:`to_jsonable` first:

* a non-finite float becomes the *string* ``"NaN"``, ``"Infinity"`` or ``"-Infinity"``, so the
  value is not lost and ``float(value)`` turns it back into the float;
* tensors and NumPy arrays/scalars become (nested lists of) Python numbers; tuples become lists;
  paths become strings.

Then :func:`dumps` serialises with ``allow_nan=False`` (a guard: it raises rather than emit a
non-standard token).

>>> dumps({"loss": float("nan"), "eig": [1.0, float("inf")]})
'{"loss": "NaN", "eig": [1.0, "Infinity"]}'
"""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sharpscope.errors import DataError

NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _float(x: float) -> float | str:
    if math.isfinite(x):
        return x
    if math.isnan(x):
        return "NaN"
    return "Infinity" if x > 0 else "-Infinity"


def to_jsonable(obj: Any) -> Any:
    """``obj`` with every value converted to strict-JSON types (see the module docstring)."""
    if obj is None or isinstance(obj, (bool, str, int)) and not isinstance(obj, np.generic):
        return obj
    if isinstance(obj, float):
        return _float(obj)
    if isinstance(obj, torch.Tensor):
        return to_jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"cannot store a {type(obj).__name__} in a run record: {obj!r}")


def dumps(obj: Any, **kwargs: Any) -> str:
    """Strict JSON text of :func:`to_jsonable` ``(obj)`` (``allow_nan=False``)."""
    return json.dumps(to_jsonable(obj), allow_nan=False, **kwargs)


def _refuse_constant(token: str) -> Any:
    raise ValueError(f"non-standard JSON token {token}")


def loads(text: str) -> Any:
    """Parse strict JSON (``NaN``/``Infinity`` tokens are an error)."""
    return json.loads(text, parse_constant=_refuse_constant)


def as_float(value: Any) -> float:
    """A stored number back as a float: numbers as they are, ``"NaN"``/``"Infinity"``/``"-Infinity"`` decoded;
    another string raises ``ValueError`` (the strict reader; :func:`as_number` reads what is not a number as NaN)."""
    if isinstance(value, str):
        try:
            return NONFINITE[value]
        except KeyError:
            raise ValueError(f"not a stored number: {value!r}") from None
    return float(value)


def as_number(value: Any) -> float:
    """A stored or computed value as a float: real numbers (Python's and NumPy's scalars) as floats, the stored
    non-finite strings ``"NaN"``/``"Infinity"``/``"-Infinity"`` decoded, anything else NaN (None, booleans,
    other strings, containers, tensors)."""
    if isinstance(value, str):
        return NONFINITE.get(value, math.nan)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return math.nan
    return float(value)


def decode(obj: Any) -> Any:
    """``obj`` with every stored ``"NaN"``/``"Infinity"``/``"-Infinity"`` string (at any depth) turned back into
    its float; other values as they are. Inverse of :func:`to_jsonable` on its non-finite floats.

    >>> decode({"loss": "NaN", "eig": [1.0, "-Infinity"], "rule": "gd_edge"})
    {'loss': nan, 'eig': [1.0, -inf], 'rule': 'gd_edge'}
    """
    if isinstance(obj, str):
        return NONFINITE.get(obj, obj)
    if isinstance(obj, list):
        return [decode(v) for v in obj]
    if isinstance(obj, dict):
        return {k: decode(v) for k, v in obj.items()}
    return obj


def without_timings(obj: Any) -> Any:
    """``obj`` with every ``*seconds*`` entry removed (recursively): what two runs of the same
    config must agree on exactly, wall-clock time aside."""
    if isinstance(obj, dict):
        return {k: without_timings(v) for k, v in obj.items() if "seconds" not in k}
    if isinstance(obj, list):
        return [without_timings(v) for v in obj]
    return obj


def read_json_object(path: Path, loads: Callable[[str], Any] = json.loads) -> dict[str, Any]:
    """The JSON object in ``path`` parsed by ``loads`` (by default lenient: ``probe --json`` output may hold bare
    ``NaN``); :class:`DataError` for a file that is not JSON or holds no object."""
    try:
        obj = loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise DataError(f"{path} is not a JSON file ({e})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj
