"""Argument checks shared by the whole package: integers, reals and flags in a given range.

Each check returns the value (an ``int``, a ``float`` or a ``bool``) or raises a
:mod:`sharpscope.errors` exception (``ConfigError`` unless ``error`` says otherwise) whose message
names the argument, the accepted values and the bad value, e.g.
``k must be a positive integer, got 0``. ``bool`` is never accepted as a number.
"""

from __future__ import annotations

import math
from typing import Any, Literal, overload

from sharpscope.errors import ConfigError, SharpscopeError

__all__ = ["check_int", "check_real", "check_bool"]

ErrorType = type[SharpscopeError]


def _int_kind(low: int | None, high: int | None) -> str:
    """Words for the integers in ``[low, high]`` (either end may be open-ended)."""
    if high is not None:
        return f"an integer <= {high}" if low is None else f"an integer in [{low}, {high}]"
    if low is None:
        return "an integer"
    return {1: "a positive integer", 0: "a non-negative integer"}.get(low, f"an integer >= {low}")


@overload
def check_int(name: str, value: Any, *, low: int | None = ..., high: int | None = ...,
              optional: Literal[False] = ..., error: ErrorType = ...) -> int: ...
@overload
def check_int(name: str, value: Any, *, low: int | None = ..., high: int | None = ...,
              optional: bool, error: ErrorType = ...) -> int | None: ...
def check_int(name: str, value: Any, *, low: int | None = None, high: int | None = None,
              optional: bool = False, error: ErrorType = ConfigError) -> int | None:
    """``value`` if it is an ``int`` (not a ``bool``) with ``low <= value <= high`` (or None when
    ``optional``), else ``error`` naming ``name``."""
    if optional and value is None:
        return None
    if (isinstance(value, bool) or not isinstance(value, int) or (low is not None and value < low)
            or (high is not None and value > high)):
        raise error(f"{name} must be {_int_kind(low, high)}{' or None' if optional else ''}, got {value!r}")
    return value


def _real_kind(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    """Words for the reals between ``low`` and ``high`` (at least one given)."""
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low}"
    return f"{'<' if high_open else '<='} {high}"


@overload
def check_real(name: str, value: Any, *, low: float | None = ..., high: float | None = ...,
               low_open: bool = ..., high_open: bool = ..., allow_inf: bool = ...,
               optional: Literal[False] = ..., error: ErrorType = ...) -> float: ...
@overload
def check_real(name: str, value: Any, *, low: float | None = ..., high: float | None = ...,
               low_open: bool = ..., high_open: bool = ..., allow_inf: bool = ...,
               optional: bool, error: ErrorType = ...) -> float | None: ...
def check_real(name: str, value: Any, *, low: float | None = None, high: float | None = None,
               low_open: bool = False, high_open: bool = False, allow_inf: bool = False,
               optional: bool = False, error: ErrorType = ConfigError) -> float | None:
    """``float(value)`` if it is a real number (not a ``bool`` or a string), finite unless
    ``allow_inf`` (never NaN), in ``[low, high]`` (``(low, …`` with ``low_open``, ``…, high)`` with
    ``high_open``); None for None when ``optional``; else ``error`` naming ``name``."""
    if optional and value is None:
        return None
    none = " or None" if optional else ""
    if isinstance(value, (bool, str, bytes)):
        raise error(f"{name} must be a real number{none}, got {value!r}")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise error(f"{name} must be a real number{none}, got {value!r}") from None
    if math.isnan(out) or (math.isinf(out) and not allow_inf):
        raise error(f"{name} must be finite, got {value!r}")
    if ((low is not None and (out < low or (low_open and out == low)))
            or (high is not None and (out > high or (high_open and out == high)))):
        raise error(f"{name} must be {_real_kind(low, high, low_open, high_open)}{none}, got {value!r}")
    return out


def check_bool(name: str, value: Any, *, error: ErrorType = ConfigError) -> bool:
    """``value`` if it is a ``bool`` (not 0/1 or a string), else ``error`` naming ``name``."""
    if not isinstance(value, bool):
        raise error(f"{name} must be true or false, got {value!r}")
    return value
