"""The registry of sharpness measures and :func:`measure`, which runs one with its cost and a weight guard."""

from __future__ import annotations

from collections.abc import Callable

from sharpscope.curvature.operators.distributed import world_size
from sharpscope.curvature.operators.objective import Objective
from sharpscope.curvature.sampling import Stopwatch
from sharpscope.errors import ConfigError
from sharpscope.measures.average_case import average_case, pac_bayes
from sharpscope.measures.output_traces import ggn_trace, jacobian_trace
from sharpscope.measures.perturbed import Counter, MeasureOutput, weights_restored
from sharpscope.measures.result import SharpnessResult
from sharpscope.measures.settings import DEFAULTS, SharpnessSettings
from sharpscope.measures.worst_case import keskar, worst_case
from sharpscope.validation import check_type

#: ``(objective, settings, counter) -> (value, stderr, convergence, details)``.
MeasureFn = Callable[[Objective, SharpnessSettings, Counter], MeasureOutput]

MEASURES: dict[str, MeasureFn] = {
    "worst": worst_case,
    "average": average_case,
    "keskar": keskar,
    "pacbayes": pac_bayes,
    "jacobian": jacobian_trace,
    "ggn": ggn_trace,
}

#: The measures computed on sets of ``m`` examples when ``settings.m`` is given (m-sharpness).
TAKES_M = ("worst", "average")


def check_measure_names(names: object, argument: str = "names") -> tuple[str, ...]:
    """``names`` (a sequence of registry keys, or one comma-separated string) as a tuple, each known and
    none repeated; one clear error otherwise."""
    items = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)  # type: ignore[call-overload]
    unknown = [n for n in items if n not in MEASURES]
    if unknown or not items:
        got = f"unknown {', '.join(map(repr, unknown))}" if unknown else "none"
        raise ConfigError(f"{argument} must name measures among {', '.join(MEASURES)}; got {got}",
                          argument=argument)
    repeated = sorted({n for n in items if items.count(n) > 1})
    if repeated:
        raise ConfigError(f"{argument} names {', '.join(repeated)} twice", argument=argument)
    return tuple(items)


def measure(name: str, objective: Objective, settings: SharpnessSettings = DEFAULTS) -> SharpnessResult:
    """Compute the sharpness measure ``name`` (a key of :data:`MEASURES`) of ``objective`` at the model's
    current weights, which are left bit-for-bit as they were (also when it raises).

    Example::

        >>> import torch
        >>> X, y = torch.randn(16, 3, dtype=torch.float64), torch.randn(16, 1, dtype=torch.float64)
        >>> model = torch.nn.Linear(3, 1).double()
        >>> objective = Objective(model, torch.nn.MSELoss(), (X, y))
        >>> result = measure("average", objective, SharpnessSettings(rho=0.1, samples=8))
        >>> result.value > 0 and result.stderr is not None
        True
    """
    check_measure_names([name], "name")
    check_type("objective", objective, Objective, "an Objective (model, loss and probe data)")
    check_type("settings", settings, SharpnessSettings, "a SharpnessSettings")
    if settings.m is not None and name not in TAKES_M:
        raise ConfigError(f"m applies to {' and '.join(TAKES_M)} sharpness, not to {name!r}", argument="m")
    if world_size() > 1:
        raise ConfigError("sharpness measures run in one process (each rank would measure its own shard)")
    counter = Counter()
    clock = Stopwatch(objective.device)
    with weights_restored(objective.model):
        value, stderr, convergence, details = MEASURES[name](objective, settings, counter)
    return SharpnessResult(name=name, value=value, stderr=stderr, forwards=counter.forwards,
                           backwards=counter.backwards, seconds=clock.seconds(),
                           settings={**settings.used(name), "dim": objective.dim, "probe_examples": objective.num_examples},
                           convergence=convergence, details=details)
