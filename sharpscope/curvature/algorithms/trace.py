"""Stochastic trace estimators with standard errors: Hutchinson and Hutch++.

Hutchinson (1989): ``tr(H) ≈ (1/ℓ) Σ_i z_iᵀ H z_i`` with ``E[z zᵀ] = I``. The variance per probe
is ``2(‖H‖_F² − Σ_i H_ii²)`` for Rademacher and ``2‖H‖_F²`` for Gaussian probes; the standard
error reported is the sample standard deviation over ``√ℓ``.

Hutch++ (Meyer, Musco, Musco, Woodruff 2021): spend a third of the products on a sketch
``Q = orth(H S)`` that captures the top of the spectrum, take its trace exactly, and run
Hutchinson only on the deflated remainder ``(I − QQᵀ) H (I − QQᵀ)``:

    tr(H) ≈ tr(Qᵀ H Q) + (1/ℓ) Σ_i g_iᵀ (I − QQᵀ) H (I − QQᵀ) g_i.

For PSD ``H`` this reaches relative error ``ε`` with ``O(1/ε)`` products instead of ``O(1/ε²)``.
Its standard error is that of the deflated Hutchinson part, conditional on the sketch.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from sharpscope.curvature.algorithms.vectors import column_dots, inner, orthonormal_columns
from sharpscope.curvature.memory import MemoryBudget, MemoryBudgetSpec, resolve_budget
from sharpscope.curvature.operators.linear_operator import LinearOperator, check_operator
from sharpscope.curvature.results import TraceResult
from sharpscope.curvature.sampling import Distribution, Stopwatch, make_generator, probes, seed_record
from sharpscope.errors import ConfigError
from sharpscope.validation import check_budget, check_int


def _quadratic_forms(op: LinearOperator, Z: Tensor) -> Tensor:
    """``z_iᵀ H z_i`` for the columns of ``Z``, one operator call per probe block."""
    return column_dots(op, Z, op.matmat(Z)).double().cpu()


def _stderr(samples: Tensor) -> float:
    return float(samples.std(unbiased=True) / math.sqrt(samples.numel())) if samples.numel() > 1 else math.inf


MIN_MATVECS = {"hutchinson": 2, "hutch++": 6}
MAX_MATVECS = 100_000  # budgets above are refused with an estimate of their time (a typo, not a plan)
_WHY = {"hutchinson": "two samples give a standard error", "hutch++": "a sketch and at least two probes"}
_NAMES = {"hutchinson": "Hutchinson", "hutch++": "Hutch++"}


def check_trace_budget(method: str, num_matvecs: object, name: str = "num_matvecs") -> int:
    """``num_matvecs`` if it is an integer budget the trace estimator ``method`` can use (at least
    2 for Hutchinson, 6 for Hutch++); checked before any product. ``name``: the argument that holds it."""
    low = MIN_MATVECS.get(method, 2)
    if isinstance(num_matvecs, int) and not isinstance(num_matvecs, bool) and num_matvecs < low:
        raise ConfigError(f"{_NAMES.get(method, method)} needs {name} >= {low} ({_WHY.get(method, '')}), "
                          f"got {num_matvecs}", argument=name)
    return check_budget(name, num_matvecs, low=low, limit=MAX_MATVECS, unit="products", seconds_each=1e-3,
                        measured_on="a small MLP on a few hundred examples on one CPU core",
                        hint="a trace estimate's standard error falls as 1/sqrt(products): a few hundred are "
                             "usually enough")


#: Vectors held per probe of a block: the probe, the operator's row-major copy of it, its product, and
#: the elementwise product of the two that the quadratic forms sum.
PER_PROBE = 4


def _checked_block(method: str, op: LinearOperator, num_matvecs: int, block_size: int,
                   memory_budget: MemoryBudgetSpec) -> tuple[MemoryBudget, int]:
    """Check a trace estimator's arguments (before any product) and resolve its memory budget; return the
    budget and the probes per block: ``block_size``, fewer when the budget holds fewer than
    ``PER_PROBE·block_size`` vectors."""
    check_operator(op)
    check_trace_budget(method, num_matvecs)
    check_int("block_size", block_size, low=1)
    budget = resolve_budget(memory_budget, op.dim, op.dtype, op.device, op.settle_memory, op.common_count)
    if budget.fits(PER_PROBE * block_size):
        return budget, block_size
    if not budget.fits(PER_PROBE):
        raise budget.refuse(f"{_NAMES[method]} on vectors of length {op.dim:,}", PER_PROBE)
    return budget, max(1, (budget.vectors or PER_PROBE) // PER_PROBE)


def hutchinson(op: LinearOperator, num_matvecs: int, *, distribution: Distribution = "rademacher",
               rtol: float | None = None, block_size: int = 8, seed: int | torch.Generator | None = None,
               memory_budget: MemoryBudgetSpec = None) -> TraceResult:
    """Hutchinson's estimate of ``tr(H)`` from at most ``num_matvecs`` probes.

    Probes are drawn and multiplied ``block_size`` at a time (never all at once), so the estimator
    holds ``PER_PROBE · block_size`` vectors whatever the budget of products; a ``memory_budget`` (see
    :mod:`sharpscope.curvature.memory`) below that shrinks the block. With ``rtol`` the estimator
    stops early once ``stderr / |estimate| < rtol`` (checked after each block, from the second block on).
    """
    requested = block_size
    budget, block_size = _checked_block("hutchinson", op, num_matvecs, block_size, memory_budget)
    gen, clock, start_hvps = make_generator(seed), Stopwatch(op.device), op.matvecs
    samples: list[Tensor] = []
    drawn = 0
    while drawn < num_matvecs:
        m = min(block_size, num_matvecs - drawn)
        samples.append(_quadratic_forms(op, probes(op, m, distribution, gen)))
        drawn += m
        if rtol is not None and drawn >= 2 * min(block_size, num_matvecs):
            s = torch.cat(samples)
            if _stderr(s) < rtol * abs(float(s.mean())):
                break
    s = torch.cat(samples)
    return TraceResult(
        estimate=float(s.mean()), stderr=_stderr(s), samples=s, hvps=op.matvecs - start_hvps,
        seconds=clock.seconds(),
        settings={"method": "hutchinson", "distribution": distribution, "num_matvecs": num_matvecs,
                  "rtol": rtol, "seed": seed_record(seed, gen),
                  "memory": budget.record("streamed probes", PER_PROBE * min(block_size, num_matvecs),
                                                limiting=block_size < requested, block_size=block_size)},
    )


def hutchpp(op: LinearOperator, num_matvecs: int, *, distribution: Distribution = "rademacher",
            seed: int | torch.Generator | None = None, block_size: int = 8,
            memory_budget: MemoryBudgetSpec = None) -> TraceResult:
    """Hutch++ with a budget of ``num_matvecs`` products (at least 6).

    ``s = ⌈m/3⌉`` products build the sketch ``Q = orth(H S)``, ``s`` give ``tr(QᵀHQ)`` and the
    remaining ``m − 2s`` probe the deflated remainder, ``block_size`` at a time. Memory: the sketch
    and its products (``PER_PROBE · s`` vectors) while it is built, then ``Q`` beside each probe block
    (``s + PER_PROBE · block_size``). When a ``memory_budget`` (see :mod:`sharpscope.curvature.memory`)
    holds fewer, the sketch shrinks to what fits and the products it frees go to the remainder's
    probes (the estimate stays unbiased; its variance grows towards Hutchinson's); the sketch size
    and the rule are recorded.
    """
    requested = block_size
    budget, block_size = _checked_block("hutch++", op, num_matvecs, block_size, memory_budget)
    gen, clock, start_hvps = make_generator(seed), Stopwatch(op.device), op.matvecs
    sketch = min(math.ceil(num_matvecs / 3), op.global_dim)
    rule = "a third of the products"
    if budget.vectors is not None and not budget.fits(max(PER_PROBE * sketch, sketch + PER_PROBE * block_size)):
        sketch = min(budget.vectors // PER_PROBE, budget.vectors - PER_PROBE * block_size)
        if sketch < 1:
            raise budget.refuse(f"Hutch++ on vectors of length {op.dim:,}", 1 + PER_PROBE * block_size)
        rule = f"shrunk to fit the memory budget ({budget.vectors} vectors)"
    remainder = num_matvecs - 2 * sketch
    Q = orthonormal_columns(op, op.matmat(probes(op, sketch, distribution, gen)))
    low_rank = float(column_dots(op, Q, op.matmat(Q)).sum())
    samples: list[Tensor] = []
    for start in range(0, remainder, block_size):
        G = probes(op, min(block_size, remainder - start), distribution, gen)
        samples.append(_quadratic_forms(op, G - Q @ inner(op, Q, G)))
    s = torch.cat(samples)
    return TraceResult(
        estimate=low_rank + float(s.mean()), stderr=_stderr(s), samples=s,
        hvps=op.matvecs - start_hvps, seconds=clock.seconds(),
        settings={"method": "hutch++", "distribution": distribution, "num_matvecs": num_matvecs,
                  "sketch_size": sketch, "sketch_rule": rule, "low_rank_trace": low_rank, "seed": seed_record(seed, gen),
                  "memory": budget.record("sketch, then streamed probes",
                                          max(PER_PROBE * sketch, sketch + PER_PROBE * min(block_size, remainder)),
                                          limiting=block_size < requested or rule != "a third of the products",
                                          block_size=block_size)},
    )


TRACE_ESTIMATORS: dict[str, Callable[..., TraceResult]] = {"hutch++": hutchpp, "hutchinson": hutchinson}


def trace_estimator(name: str) -> Callable[..., TraceResult]:
    """The trace estimator called ``name`` (``"hutch++"`` or ``"hutchinson"``)."""
    try:
        return TRACE_ESTIMATORS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"trace method must be one of {', '.join(TRACE_ESTIMATORS)}; got {name!r}") from None
