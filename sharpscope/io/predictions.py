"""Per-example test outcomes stored compactly in a record, so two runs on one test set can be compared
example by example (a paired test of their accuracies).

A record's ``test_correct`` is ``{"n": N, "bits": BASE64}``: the ``N`` booleans "example ``i`` is classified
right" packed eight to a byte (first example in the highest bit, NumPy's ``packbits`` order) and base64
encoded, about ``N/6`` characters.

>>> packed = pack_correct([True, False, True, True, False, False, False, False, True])
>>> packed
{'n': 9, 'bits': 'sIA='}
>>> unpack_correct(packed).astype(int).tolist()
[1, 0, 1, 1, 0, 0, 0, 0, 1]
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from sharpscope.errors import DataError


def pack_correct(correct: Sequence[bool] | np.ndarray[Any, Any]) -> dict[str, Any]:
    """``{"n", "bits"}`` for a sequence of per-example outcomes (see the module docstring)."""
    flags = np.asarray(correct, dtype=bool).reshape(-1)
    return {"n": int(flags.size), "bits": base64.b64encode(np.packbits(flags).tobytes()).decode("ascii")}


def unpack_correct(packed: Mapping[str, Any]) -> np.ndarray[Any, Any]:
    """The bool array :func:`pack_correct` packed; one clear error for a malformed entry."""
    n, bits = packed.get("n"), packed.get("bits")
    if not isinstance(n, int) or n < 0 or not isinstance(bits, str):
        raise DataError(f"test_correct must be {{'n': int, 'bits': base64 string}}, got {dict(packed)!r:.80}")
    try:
        raw = np.frombuffer(base64.b64decode(bits, validate=True), dtype=np.uint8)
    except (binascii.Error, ValueError) as e:
        raise DataError(f"test_correct bits are not base64 ({e})") from None
    if raw.size != (n + 7) // 8:
        raise DataError(f"test_correct holds {raw.size} bytes for {n} examples (needs {(n + 7) // 8})")
    return np.unpackbits(raw)[:n].astype(bool)
