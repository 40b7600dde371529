"""Edge-of-stability thresholds: the largest curvature an update rule tolerates on a quadratic.

Every function returns the critical value of the relevant eigenvalue: GD, momentum and SAM
compare it with ``λ_max(H)``; Adam / EMA momentum with ``λ_max(P⁻¹H)`` of the preconditioned
Hessian. On the 1-D quadratic ``f(x) = λx²/2`` the iteration
is stable for ``λ`` below the threshold and diverges above it.

Worked values at ``η = 0.01``, ``β = 0.9`` (checked by bisection in ``tests/test_thresholds.py``)::

    >>> round(gd_edge(0.01), 6), round(momentum_edge(0.01, 0.9), 6)
    (200.0, 380.0)
    >>> round(momentum_edge(0.01, 0.9, nesterov=True), 1), round(adam_edge(0.01, 0.9), 6)
    (135.7, 3800.0)
    >>> [round(sam_edge(0.01, 0.05, g), 1) for g in (10.0, 1.0, 0.1)]
    [123.6, 54.0, 19.0]
"""

from __future__ import annotations

import math

from sharpscope.errors import ConfigError
from sharpscope.validation import check_real

__all__ = ["gd_edge", "momentum_edge", "ema_momentum_edge", "adam_edge", "sam_edge"]


def _lr(lr: float) -> float:
    out = check_real("lr", lr)
    if out <= 0.0:
        raise ConfigError(f"lr must be > 0, got {lr!r}")
    return out


def _beta(name: str, beta: float) -> float:
    out = check_real(name, beta)
    if not 0.0 <= out < 1.0:
        raise ConfigError(f"{name} must satisfy 0 <= {name} < 1, got {beta!r}")
    return out


def gd_edge(lr: float) -> float:
    """Gradient descent ``x ← x − η∇f``: stable iff ``λ_max(H) < 2/η``.

    Per eigen-direction the error is multiplied by ``1 − ηλ``, which leaves ``[−1, 1]`` at ``λ = 2/η``.
    """
    return 2.0 / _lr(lr)


def momentum_edge(lr: float, beta: float, nesterov: bool = False) -> float:
    """Heavy-ball or Nesterov momentum in the PyTorch form (``torch.optim.SGD``, dampening 0).

    Update: ``b ← βb + g``; Polyak ``x ← x − ηb``; Nesterov ``x ← x − η(g + βb)``.
    Thresholds on ``λ_max(H)``::

        Polyak    (2 + 2β) / η
        Nesterov  (2 + 2β) / (η (1 + 2β))

    Both reduce to ``2/η`` at ``β = 0``. Derivation: the characteristic polynomial of the
    2×2 iteration has a root at ``z = −1`` exactly at these λ.
    """
    eta = _lr(lr)
    b = _beta("beta", beta)
    edge = (2.0 + 2.0 * b) / eta
    return edge / (1.0 + 2.0 * b) if nesterov else edge


def ema_momentum_edge(lr: float, beta: float) -> float:
    """EMA momentum ``m ← βm + (1 − β)g, x ← x − ηm``: stable iff ``λ < (2 + 2β)/(η(1 − β))``.

    This is heavy ball with effective step ``η(1 − β)``, hence the Polyak value divided by
    ``1 − β`` (38/η at β = 0.9).
    """
    eta = _lr(lr)
    b = _beta("beta", beta)
    return (2.0 + 2.0 * b) / (eta * (1.0 - b))


def adam_edge(lr: float, beta1: float) -> float:
    """Adam's threshold on the preconditioned sharpness ``λ_max(P⁻¹H)`` (Cohen et al. 2022).

    Equal to :func:`ema_momentum_edge` ``(2 + 2β₁)/(η(1 − β₁))`` (38/η at β₁ = 0.9), with
    ``P = diag(sqrt(v̂) + ε)`` the element-wise Adam denominator; compare it with the top
    eigenvalue of ``P^{-1/2} H P^{-1/2}``, not of ``H``.
    """
    return ema_momentum_edge(lr, beta1)


def sam_edge(lr: float, rho: float, grad_norm: float, momentum: float = 0.0) -> float:
    """SAM-edge of Long & Bartlett (2024) for ``w ← w − η∇L(w + ρ g/‖g‖)``.

    With ‖g‖ held fixed, SAM's gradient on a quadratic is ``H(I + ρH/‖g‖)w``: an eigen-direction
    with eigenvalue λ sees the effective curvature ``λ(1 + ρλ/‖g‖)``, and plain gradient descent on
    it is stable iff ``ηλ + (ηρ/‖g‖)λ² < 2``. Solving gives::

        SAM_edge = (‖g‖ / (2ρ)) · (sqrt(1 + 8ρ/(η‖g‖)) − 1)
                 = 4 / (η · (1 + sqrt(1 + 8ρ/(η‖g‖))))      (evaluated in this form)

    The second form is algebraically equal and free of cancellation as ρ → 0. Limits:
    ``rho == 0`` gives ``2/η``; ``grad_norm == 0`` with ``rho > 0`` gives ``0.0``.
    ``grad_norm`` is the gradient norm at the current (unperturbed) iterate on the batch in use.

    ``momentum = β`` (heavy ball in the PyTorch form, dampening 0, not Nesterov) applies the same
    linearisation with the momentum threshold ``(2 + 2β)/η`` in place of ``2/η``: with
    ``c = 2 + 2β``, ``ηλ(1 + ρλ/‖g‖) < c`` gives ``2c / (η(1 + sqrt(1 + 4ρc/(η‖g‖))))``. This
    extension is the toolkit's (Long & Bartlett derive the edge without momentum); ``momentum = 0``
    is their formula.
    """
    eta = _lr(lr)
    r = check_real("rho", rho)
    if r < 0.0:
        raise ConfigError(f"rho must be >= 0, got {rho!r}")
    g = check_real("grad_norm", grad_norm)
    if g < 0.0:
        raise ConfigError(f"grad_norm must be >= 0, got {grad_norm!r}")
    c = 2.0 + 2.0 * _beta("momentum", momentum)
    if r == 0.0:
        return c / eta
    if g == 0.0:
        return 0.0
    return 2.0 * c / (eta * (1.0 + math.sqrt(1.0 + 4.0 * r * c / (eta * g))))
