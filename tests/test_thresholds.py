"""Tests for sharpscope.thresholds: reference values, properties, and a
bisection on simulated 1-D quadratics that finds each divergence threshold independently."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sharpscope.errors import ConfigError
from sharpscope.thresholds import adam_edge, ema_momentum_edge, gd_edge, momentum_edge, sam_edge

ETA, BETA, RHO = 0.01, 0.9, 0.05


# --------------------------------------------------------------------------- reference values (U5)
def test_reference_values_u5() -> None:
    assert gd_edge(ETA) == pytest.approx(200.0, rel=1e-12)
    assert momentum_edge(ETA, BETA) == pytest.approx(380.0, rel=1e-12)
    assert momentum_edge(ETA, BETA, nesterov=True) == pytest.approx(3.8 / 2.8 / ETA, rel=1e-12)
    assert round(momentum_edge(ETA, BETA, nesterov=True), 1) == 135.7
    assert ema_momentum_edge(ETA, BETA) == pytest.approx(3800.0, rel=1e-12)
    assert adam_edge(ETA, BETA) == ema_momentum_edge(ETA, BETA)


@pytest.mark.parametrize(("g", "expected"), [(10.0, 123.6), (1.0, 54.0), (0.1, 19.0)])
def test_sam_edge_reference_values(g: float, expected: float) -> None:
    assert round(sam_edge(ETA, RHO, g), 1) == expected
    # the closed form as Long & Bartlett write it
    direct = (g / (2 * RHO)) * (math.sqrt(1 + 8 * RHO / (ETA * g)) - 1)
    assert sam_edge(ETA, RHO, g) == pytest.approx(direct, rel=1e-12)


def test_beta_zero_reduces_to_gd() -> None:
    for f in (lambda: momentum_edge(ETA, 0.0), lambda: momentum_edge(ETA, 0.0, nesterov=True),
              lambda: ema_momentum_edge(ETA, 0.0), lambda: sam_edge(ETA, 0.0, 3.0)):
        assert f() == pytest.approx(2 / ETA, rel=1e-15)


# --------------------------------------------------------------------------- SAM-edge properties (U6)
def test_sam_edge_limits() -> None:
    assert sam_edge(ETA, RHO, 0.0) == 0.0
    assert sam_edge(ETA, 0.0, 0.0) == 2 / ETA
    gap = (2 / ETA - sam_edge(ETA, 1e-6, 1.0)) / (2 / ETA)
    assert 0 < gap < 1e-3
    # expansion 2/η − 4ρ/(η²‖g‖) for small ρ
    assert 2 / ETA - sam_edge(ETA, 1e-6, 1.0) == pytest.approx(4e-6 / ETA**2, rel=1e-3)
    # ‖g‖ → 0: SAM_edge ≈ sqrt(2‖g‖/(ηρ))
    assert sam_edge(ETA, RHO, 1e-8) == pytest.approx(math.sqrt(2e-8 / (ETA * RHO)), rel=1e-3)


@settings(max_examples=200, deadline=None)
@given(
    lr=st.floats(1e-4, 10.0),
    rho=st.floats(1e-6, 10.0),
    g1=st.floats(1e-4, 1e3),
    factor=st.floats(1.001, 100.0),
)
def test_sam_edge_properties(lr: float, rho: float, g1: float, factor: float) -> None:
    e1 = sam_edge(lr, rho, g1)
    e2 = sam_edge(lr, rho, g1 * factor)
    assert 0.0 < e1 < 2.0 / lr
    assert e1 < e2  # strictly increasing in ‖g‖
    assert e1 < sam_edge(lr, rho / 2, g1)  # decreasing in ρ
    # e1 solves ηλ(1 + ρλ/‖g‖) = 2
    assert lr * e1 * (1 + rho * e1 / g1) == pytest.approx(2.0, rel=1e-9)


@pytest.mark.parametrize(
    "call",
    [
        lambda: gd_edge(0.0),
        lambda: gd_edge(-1.0),
        lambda: gd_edge(float("nan")),
        lambda: gd_edge(float("inf")),
        lambda: gd_edge(True),
        lambda: gd_edge("0.1"),  # type: ignore[arg-type]
        lambda: momentum_edge(0.1, 1.0),
        lambda: momentum_edge(0.1, -0.1),
        lambda: ema_momentum_edge(0.1, 1.5),
        lambda: adam_edge(0.1, 1.0),
        lambda: sam_edge(0.1, -0.01, 1.0),
        lambda: sam_edge(0.1, 0.05, -1.0),
        lambda: sam_edge(0.0, 0.05, 1.0),
    ],
)
def test_invalid_inputs_raise_config_error(call: Callable[[], float]) -> None:
    with pytest.raises(ConfigError):
        call()


def test_error_names_the_argument() -> None:
    with pytest.raises(ConfigError, match="beta"):
        momentum_edge(0.1, 1.0)
    with pytest.raises(ConfigError, match="grad_norm"):
        sam_edge(0.1, 0.1, -1.0)
    with pytest.raises(ConfigError, match="lr"):
        gd_edge(0.0)


# --------------------------------------------------------------------------- bisection (U5)
# Each simulator runs an update rule on f(x) = λx²/2 from x0 = 1 (zero momentum buffer) and
# returns |x_T|. The predicate "diverged" is |x_T| > 1 after T steps.
STEPS = 3000


def _gd(lam: float) -> float:
    x = 1.0
    for _ in range(STEPS):
        x -= ETA * lam * x
        if abs(x) > 1e30:
            break
    return abs(x)


def _polyak(lam: float) -> float:  # torch.optim.SGD(momentum=β): b ← βb + g; x ← x − ηb
    x, b = 1.0, 0.0
    for _ in range(STEPS):
        b = BETA * b + lam * x
        x -= ETA * b
        if abs(x) > 1e30:
            break
    return abs(x)


def _nesterov(lam: float) -> float:  # torch.optim.SGD(nesterov=True): x ← x − η(g + βb)
    x, b = 1.0, 0.0
    for _ in range(STEPS):
        g = lam * x
        b = BETA * b + g
        x -= ETA * (g + BETA * b)
        if abs(x) > 1e30:
            break
    return abs(x)


def _ema(lam: float) -> float:  # m ← βm + (1−β)g; x ← x − ηm
    x, m = 1.0, 0.0
    for _ in range(STEPS):
        m = BETA * m + (1 - BETA) * lam * x
        x -= ETA * m
        if abs(x) > 1e30:
            break
    return abs(x)


def _sam_linearised(g_norm: float) -> Callable[[float], float]:
    # Gradient at w + ρ g/‖g‖ on the quadratic is g + (ρ/‖g‖) H g with ‖g‖ held fixed.
    def run(lam: float) -> float:
        x = 1.0
        for _ in range(STEPS):
            grad = lam * x
            x -= ETA * (grad + (RHO / g_norm) * lam * grad)
            if abs(x) > 1e30:
                break
        return abs(x)

    return run


def _bisect_threshold(simulate: Callable[[float], float], guess: float) -> float:
    lo, hi = 0.05 * guess, 20.0 * guess
    assert simulate(lo) <= 1.0 and simulate(hi) > 1.0
    for _ in range(40):
        mid = math.sqrt(lo * hi)
        if simulate(mid) > 1.0:
            hi = mid
        else:
            lo = mid
    return 0.5 * (lo + hi)


@pytest.mark.parametrize(
    ("name", "simulate", "predicted"),
    [
        ("gd", _gd, gd_edge(ETA)),
        ("polyak", _polyak, momentum_edge(ETA, BETA)),
        ("nesterov", _nesterov, momentum_edge(ETA, BETA, nesterov=True)),
        ("ema", _ema, ema_momentum_edge(ETA, BETA)),
        ("sam_g10", _sam_linearised(10.0), sam_edge(ETA, RHO, 10.0)),
        ("sam_g1", _sam_linearised(1.0), sam_edge(ETA, RHO, 1.0)),
        ("sam_g0.1", _sam_linearised(0.1), sam_edge(ETA, RHO, 0.1)),
    ],
)
def test_bisection_matches_formula(name: str, simulate: Callable[[float], float],
                                   predicted: float) -> None:
    # the bracket is deliberately wide (0.05x..20x): the formula only seeds its scale
    measured = _bisect_threshold(simulate, predicted)
    assert measured == pytest.approx(predicted, rel=0.01), name
