"""Argument checks shared by the whole package: integers, reals and flags in a given range,
seeds, tolerances, nesting depth, types at the public boundary, work budgets, output folders and module paths.

Each check returns the value (an ``int``, a ``float``, a ``bool`` or one of given choices) or raises a
:mod:`sharpscope.errors` exception (``ConfigError`` unless ``error`` says otherwise) whose message
names the argument, the accepted values and the bad value, e.g.
``k must be a positive integer, got 0``; the exception also carries the name as its
``argument``. ``bool`` is never accepted as a number. Names are the library's argument names
(``max_iter``), never a command-line spelling.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, overload

from sharpscope.errors import ConfigError, SharpscopeError

__all__ = ["check_int", "check_real", "check_bool", "check_choice", "check_seed", "offset_seed", "check_tol",
           "check_depth", "check_type", "shown", "check_budget", "duration_words", "check_output_dir", "check_module_path", "check_cast", "SEED_LIMIT", "MAX_DEPTH"]

SEED_LIMIT = 2**64  # torch generators take seeds in [0, 2⁶⁴)
MAX_DEPTH = 32  # nesting of lists and dicts in a configuration value

ErrorType = type[SharpscopeError]
T = TypeVar("T")


def _error(error: ErrorType, name: str, message: str) -> SharpscopeError:
    """``error(message)``, with ``argument=name`` when ``name`` is a (dotted) Python name such as
    ``max_iter`` or ``optimizer_kwargs.lr``, not a description."""
    return error(message, argument=name if all(part.isidentifier() for part in name.split(".")) else None)


def shown(value: Any) -> str:
    """``repr(value)`` for a one-line message: a multi-line repr (a model) becomes its type, a long one
    is cut at 80 characters."""
    text = repr(value)
    if "\n" in text:
        return f"a {type(value).__name__}"
    return text if len(text) <= 80 else text[:77] + "..."


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
        none = " or None" if optional else ""
        raise _error(error, name, f"{name} must be {_int_kind(low, high)}{none}, got {shown(value)}")
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
        raise _error(error, name, f"{name} must be a real number{none}, got {shown(value)}")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise _error(error, name, f"{name} must be a real number{none}, got {shown(value)}") from None
    if math.isnan(out) or (math.isinf(out) and not allow_inf):
        raise _error(error, name, f"{name} must be finite, got {shown(value)}")
    if ((low is not None and (out < low or (low_open and out == low)))
            or (high is not None and (out > high or (high_open and out == high)))):
        raise _error(error, name, f"{name} must be {_real_kind(low, high, low_open, high_open)}{none}, got {shown(value)}")
    return out


def check_bool(name: str, value: Any, *, error: ErrorType = ConfigError) -> bool:
    """``value`` if it is a ``bool`` (not 0/1 or a string), else ``error`` naming ``name``."""
    if not isinstance(value, bool):
        raise _error(error, name, f"{name} must be true or false, got {shown(value)}")
    return value


def _alternatives(choices: Sequence[Any]) -> str:
    """``'a', 'b' or 'c'``: the choices as Python literals."""
    shown = [repr(c) for c in choices]
    return shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} or {shown[-1]}"


def check_choice(name: str, value: Any, choices: Sequence[T], *, error: ErrorType = ConfigError) -> T:
    """``value`` if it is one of ``choices`` (of the same type: ``True`` is not ``1``), else ``error``
    naming ``name`` and the choices, e.g. ``bn must be 'eval' or 'batch', got 'train'``."""
    for choice in choices:
        if type(value) is type(choice) and value == choice:
            return choice
    raise _error(error, name, f"{name} must be {_alternatives(choices)}, got {shown(value)}")


def check_seed(name: str, value: Any, *, optional: bool = False, error: ErrorType = ConfigError) -> int | None:
    """``value`` if it is an integer seed in ``[0, 2⁶⁴)`` (the range of a torch generator)."""
    return check_int(name, value, low=0, high=SEED_LIMIT - 1, optional=optional, error=error)


def offset_seed(seed: int, offset: int) -> int:
    """``(seed + offset) mod 2⁶⁴``: a seed derived from ``seed`` that stays in a generator's range
    (equal to ``seed + offset`` for every seed below ``2⁶⁴ - offset``)."""
    return (int(seed) + int(offset)) % SEED_LIMIT


def check_tol(name: str, value: Any, *, error: ErrorType = ConfigError) -> float:
    """A relative tolerance: a real number in ``(0, 1)`` (at 1 or above, every start "converges")."""
    return check_real(name, value, low=0.0, high=1.0, low_open=True, high_open=True, error=error)


def check_depth(name: str, value: Any, *, limit: int = MAX_DEPTH, error: ErrorType = ConfigError) -> Any:
    """``value`` if its lists and dicts nest at most ``limit`` levels deep (checked without recursion)."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, tuple, dict)):
            if depth >= limit:
                raise _error(error, name, f"{name} nests lists/dicts more than {limit} levels deep")
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return value


def check_type(name: str, value: Any, types: type | tuple[type, ...], what: str, *, optional: bool = False,
               error: ErrorType = ConfigError) -> Any:
    """``value`` if it is an instance of ``types`` (or None when ``optional``), else ``error``:
    ``model must be a torch.nn.Module, got str``. ``what`` says in words what is expected."""
    if (optional and value is None) or isinstance(value, types):
        return value
    raise _error(error, name, f"{name} must be {what}{' or None' if optional else ''}, got {type(value).__name__}")


def duration_words(seconds: float) -> str:
    """``"3.2 hours"``, ``"11.6 days"``, ``"3.2e+04 years"``: a duration in the largest fitting unit."""
    for unit, size in (("years", 365.25 * 86400), ("days", 86400.0), ("hours", 3600.0), ("minutes", 60.0)):
        if seconds >= size:
            value = seconds / size
            return f"{value:.3g} {unit}" if value < 1e4 else f"{value:.2g} {unit}"
    return f"{seconds:.3g} seconds"


def check_budget(name: str, value: Any, *, low: int, limit: int, unit: str, seconds_each: float, measured_on: str,
                 hint: str, error: ErrorType = ConfigError) -> int:
    """``value`` if it is an integer in ``[low, limit]``; above ``limit`` the error states what the work
    would cost, ``value × seconds_each`` (``seconds_each``: the time of one ``unit`` ``measured_on`` a
    stated setting), and ``hint``, what to do instead. Checked before any work, so a mistyped budget
    (``1000000000`` for ``1000``) fails at once instead of running for days."""
    value = check_int(name, value, low=low, error=error)
    if value > limit:
        raise _error(error, name, f"{name}={value:,} is over the limit of {limit:,} {unit}: it would take about "
                                  f"{duration_words(value * seconds_each)} at {seconds_each * 1e3:g} ms each "
                                  f"({measured_on}); {hint}")
    return value


def check_output_dir(path: str | os.PathLike[str], flag: str, *, error: ErrorType = ConfigError) -> Path:
    """``path`` as a :class:`~pathlib.Path` if it is, or can become, a writable folder: it is a
    folder, or its nearest existing ancestor is a writable folder. Checked before any work."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise error(f"{flag} {path} exists and is not a folder")
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise error(f"{flag} {path}: {probe} is a file, so the folder cannot be created")
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        raise error(f"{flag} {path}: {probe} is not writable")
    return path


def check_module_path(name: str, target: Any, *, error: ErrorType = ConfigError) -> str:
    """A ``"module:attribute"`` string naming an absolute module (no leading dot: a relative
    import has no package to be relative to here)."""
    if not isinstance(target, str):
        raise _error(error, name, f"{name} must look like 'module:function', got {target!r}")
    module, sep, attr = target.partition(":")
    if not sep or not module or not attr:
        raise _error(error, name, f"{name} must look like 'module:function', got {target!r}")
    if module.startswith("."):
        raise _error(error, name, f"{name} {target!r}: relative module paths are not supported; name the module "
                     "from the current folder or an installed package (e.g. 'models:factory')")
    if not all(part.isidentifier() for part in module.split(".")) or not all(
            part.isidentifier() for part in attr.split(".")):
        raise _error(error, name, f"{name} {target!r}: module and attribute must be dotted Python names")
    return target


def check_cast(name: str, original: Any, cast: Any, *, error: ErrorType | None = None) -> Any:
    """``cast`` (a tensor converted from ``original``) if the conversion kept every finite value
    finite; else an error (``DataError`` by default) naming the largest magnitude and the dtype
    it overflows, e.g. 1e300 in float32."""
    import torch

    from sharpscope.errors import DataError

    if (not cast.is_floating_point() or cast.dtype == original.dtype or bool(torch.isfinite(cast).all())
            or not bool(torch.isfinite(original).all())):
        return cast
    biggest = float(original.detach().abs().max())
    raise (error or DataError)(f"{name}: values up to {biggest:.3g} overflow {str(cast.dtype).replace('torch.', '')}; "
                               "compute in float64 or rescale the data")
