"""Strict JSON for run directories; lives in :mod:`sharpscope.io.jsonsafe`, re-exported here."""

from sharpscope.io.jsonsafe import NONFINITE, as_float, decode, dumps, loads, to_jsonable, without_timings

__all__ = ["NONFINITE", "as_float", "decode", "dumps", "loads", "to_jsonable", "without_timings"]
