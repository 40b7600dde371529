"""sharpscope.validation: accepted values come back unchanged, everything else raises a message naming it."""

from __future__ import annotations

import math
import pickle
from fractions import Fraction

import numpy as np
import pytest

from sharpscope.errors import ConfigError, DataError
from sharpscope.validation import check_bool, check_choice, check_int, check_real, check_tol


@pytest.mark.parametrize(("value", "kwargs"), [(0, {}), (-5, {}), (1, {"low": 1}), (7, {"low": 2, "high": 7}),
                                               (0, {"low": 0}), (2**40, {"low": 1})])
def test_check_int_accepts(value: int, kwargs: dict) -> None:
    out = check_int("n", value, **kwargs)
    assert out == value and type(out) is int


@pytest.mark.parametrize(("value", "kwargs", "message"), [
    (0, {"low": 1}, "n must be a positive integer, got 0"),
    (True, {"low": 1}, "n must be a positive integer, got True"),
    (1.0, {"low": 1}, "n must be a positive integer, got 1.0"),
    ("3", {}, "n must be an integer, got '3'"),
    (None, {"low": 0}, "n must be a non-negative integer, got None"),
    (-1, {"low": 0}, "n must be a non-negative integer, got -1"),
    (1, {"low": 2}, "n must be an integer >= 2, got 1"),
    (8, {"low": 2, "high": 7}, r"n must be an integer in \[2, 7\], got 8"),
    (8, {"high": 7}, "n must be an integer <= 7, got 8"),
    (0, {"low": 1, "optional": True}, "n must be a positive integer or None, got 0"),
])
def test_check_int_rejects(value: object, kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=f"^{message}$"):
        check_int("n", value, **kwargs)


def test_check_int_optional_and_error_class() -> None:
    assert check_int("n", None, low=1, optional=True) is None
    assert check_int("n", 3, low=1, optional=True) == 3
    with pytest.raises(DataError, match="step must be a non-negative integer, got -1"):
        check_int("step", -1, low=0, error=DataError)


@pytest.mark.parametrize(("value", "kwargs", "expected"), [
    (0, {"low": 0.0}, 0.0), (1, {"low": 0.0, "high": 1.0}, 1.0), (np.float32(0.25), {}, 0.25),
    (Fraction(1, 2), {"low": 0.0, "low_open": True}, 0.5), (math.inf, {"allow_inf": True, "low": 0.0}, math.inf),
    (-3.5, {}, -3.5),
])
def test_check_real_accepts(value: object, kwargs: dict, expected: float) -> None:
    out = check_real("x", value, **kwargs)
    assert out == expected and type(out) is float


@pytest.mark.parametrize(("value", "kwargs", "message"), [
    (True, {}, "x must be a real number, got True"),
    ("0.5", {}, "x must be a real number, got '0.5'"),
    ([1.0], {}, r"x must be a real number, got \[1.0\]"),
    (math.nan, {"allow_inf": True}, "x must be finite, got nan"),
    (math.inf, {}, "x must be finite, got inf"),
    (-0.1, {"low": 0.0}, "x must be >= 0.0, got -0.1"),
    (0.0, {"low": 0.0, "low_open": True}, "x must be > 0.0, got 0.0"),
    (2.0, {"high": 1.0}, "x must be <= 1.0, got 2.0"),
    (1.0, {"high": 1.0, "high_open": True}, "x must be < 1.0, got 1.0"),
    (1.5, {"low": 0.0, "high": 1.0}, r"x must be in \[0.0, 1.0\], got 1.5"),
    (0.0, {"low": 0.0, "high": 1.0, "low_open": True, "optional": True}, r"x must be in \(0.0, 1.0\] or None, got 0.0"),
    (1.0, {"low": 0.0, "high": 1.0, "high_open": True}, r"x must be in \[0.0, 1.0\), got 1.0"),
])
def test_check_real_rejects(value: object, kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=f"^{message}$"):
        check_real("x", value, **kwargs)


def test_check_real_optional_and_error_class() -> None:
    assert check_real("x", None, optional=True) is None
    with pytest.raises(ConfigError, match="x must be a real number, got None"):
        check_real("x", None)
    with pytest.raises(DataError, match="x must be finite"):
        check_real("x", math.nan, error=DataError)


def test_check_bool() -> None:
    assert check_bool("flag", True) is True and check_bool("flag", False) is False
    for bad in (0, 1, "true", None, np.bool_(True)):
        with pytest.raises(ConfigError, match=f"^flag must be true or false, got {bad!r}$"):
            check_bool("flag", bad)
    with pytest.raises(DataError, match="flag must be true or false"):
        check_bool("flag", 1, error=DataError)


def test_optim_base_reexports_check_int() -> None:
    from sharpscope.optim import _base

    assert _base.check_int is check_int  # track.runner imports it from there


def test_check_choice_returns_the_choice_and_names_the_alternatives() -> None:
    assert check_choice("bn", "batch", ("eval", "batch")) == "batch"
    assert check_choice("cache_graphs", "auto", (True, False, "auto")) == "auto"
    assert check_choice("cache_graphs", False, (True, False, "auto")) is False
    for bad, shown in (("train", "'train'"), (1, "1"), (0, "0")):  # 1 == True, but 1 is not a choice
        with pytest.raises(ConfigError, match=f"^cache_graphs must be True, False or 'auto', got {shown}$") as info:
            check_choice("cache_graphs", bad, (True, False, "auto"))
        assert info.value.argument == "cache_graphs"
    with pytest.raises(ConfigError, match="^stop must be 'residual', got 'x'$"):
        check_choice("stop", "x", ("residual",))
    with pytest.raises(DataError, match="^kind must be 'a' or 'b', got 'c'$"):
        check_choice("kind", "c", ("a", "b"), error=DataError)


def test_errors_carry_the_library_argument_and_keep_one_line() -> None:
    checks = [(lambda: check_int("max_iter", 0, low=1), "max_iter"),
              (lambda: check_real("optimizer_kwargs.lr", math.nan), "optimizer_kwargs.lr"),
              (lambda: check_tol("tol", 1.0), "tol"), (lambda: check_bool("trace", 1), "trace"),
              (lambda: check_int("layer group 'a'", -1, low=0), None)]  # a description, not an argument name
    for check, argument in checks:
        with pytest.raises(ConfigError) as info:
            check()
        assert info.value.argument == argument and "\n" not in str(info.value)
        assert str(info.value).startswith(argument or "layer group")
        again = pickle.loads(pickle.dumps(info.value))
        assert type(again) is ConfigError and str(again) == str(info.value) and again.argument == argument
    assert ConfigError("plain").argument is None and str(ConfigError("plain", argument="k")) == "plain"
    with pytest.raises(DataError) as other:
        check_int("n", 0, low=1, error=DataError)
    assert other.value.argument == "n" and pickle.loads(pickle.dumps(other.value)).argument == "n"
