"""How each sharpness measure is computed: one frozen record, one definition of each default."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal, get_args

from sharpscope.errors import ConfigError
from sharpscope.validation import check_bool, check_choice, check_int, check_real, check_seed, check_tol

Norm = Literal["l2", "linf"]
TraceMethod = Literal["exact", "hutchinson", "hutch++"]

#: Model calls above which a measure is refused before it starts (a typo, not a plan).
MAX_STEPS = 100_000
MAX_SAMPLES = 100_000


@dataclass(frozen=True)
class SharpnessSettings:
    """Settings of the sharpness measures (:func:`sharpscope.measures.measure`); each measure uses the
    fields that apply to it and records exactly those with its result.

    * ``rho``: radius of the perturbation set (worst case: ``‖z‖ ≤ ρ``; average case: Gaussian of
      expected norm about ``ρ`` for ``l2``, uniform on ``[−ρ, ρ]^d`` for ``linf``), ``δ = s ⊙ z``
      with ``s = |w|`` when ``adaptive`` and ``s = 1`` otherwise.
    * ``norm``: ``"l2"`` or ``"linf"``.
    * ``m``: compute worst/average sharpness on consecutive batches of ``m`` examples and average
      (m-sharpness); None: the whole probe set at once.
    * ``steps``, ``restarts``: projected gradient ascent steps per run and number of runs (the first
      run starts from the gradient direction, the others from random points of the set).
    * ``samples``: antithetic pairs ``±δ`` of Monte-Carlo draws (average case, PAC-Bayes σ).
    * ``target``: PAC-Bayes flatness finds the largest ``σ`` with expected loss increase ``≤ target``;
      ``tol``: the bisection stops when the bracket on ``σ`` is narrower than ``tol·σ``.
    * ``epsilon``: Keskar et al.'s box ``|δ_i| ≤ ε(|w_i| + 1)``.
    * ``trace``: ``"exact"`` (one backward pass per output element) or a stochastic estimator of the
      Jacobian and GGN traces with ``matvecs`` products; ``block``: vectors per vectorised pass.
    * ``seed``: every random draw (same seed, same answer).
    """

    rho: float = 0.05
    norm: Norm = "l2"
    adaptive: bool = False
    m: int | None = None
    steps: int = 20
    restarts: int = 1
    samples: int = 32
    seed: int = 0
    target: float = 0.1
    tol: float = 0.01
    epsilon: float = 1e-3
    trace: TraceMethod = "exact"
    matvecs: int = 99
    block: int = 32

    def __post_init__(self) -> None:
        check_real("rho", self.rho, low=0.0, low_open=True)
        check_choice("norm", self.norm, get_args(Norm))
        check_bool("adaptive", self.adaptive)
        check_int("m", self.m, low=1, optional=True)
        check_int("steps", self.steps, low=1, high=MAX_STEPS)
        check_int("restarts", self.restarts, low=1, high=1000)
        check_int("samples", self.samples, low=2, high=MAX_SAMPLES)
        check_seed("seed", self.seed)
        check_real("target", self.target, low=0.0, low_open=True)
        check_tol("tol", self.tol)
        check_real("epsilon", self.epsilon, low=0.0, low_open=True)
        check_choice("trace", self.trace, get_args(TraceMethod))
        check_int("matvecs", self.matvecs, low=2, high=MAX_STEPS)
        check_int("block", self.block, low=1)
        if self.trace == "hutch++" and self.matvecs < 6:
            raise ConfigError(f"Hutch++ needs matvecs >= 6 (a sketch and two probes), got {self.matvecs}",
                              argument="matvecs")

    def used(self, name: str) -> dict[str, object]:
        """The fields measure ``name`` read (:data:`FIELDS_USED`), as a JSON-ready dict; an exact Jacobian or
        GGN trace reads neither ``matvecs`` nor ``seed``."""
        values = asdict(self)
        skipped = ("matvecs", "seed") if name in ("jacobian", "ggn") and self.trace == "exact" else ()
        return {field: values[field] for field in FIELDS_USED[name] if field not in skipped}


#: The default settings of every measure.
DEFAULTS = SharpnessSettings()

#: The fields of :class:`SharpnessSettings` each measure reads, as its result records them (the Jacobian
#: and GGN traces read ``matvecs`` and ``seed`` only with a stochastic ``trace``).
FIELDS_USED: dict[str, tuple[str, ...]] = {
    "worst": ("rho", "norm", "adaptive", "m", "steps", "restarts", "seed"),
    "average": ("rho", "norm", "adaptive", "m", "samples", "seed"),
    "keskar": ("epsilon", "steps", "restarts", "seed"),
    "pacbayes": ("target", "tol", "adaptive", "samples", "seed"),
    "jacobian": ("trace", "matvecs", "block", "seed"),
    "ggn": ("trace", "matvecs", "block", "seed"),
}


def used_by(field: str) -> tuple[str, ...]:
    """The measures that read ``field`` (a field of :class:`SharpnessSettings`)."""
    return tuple(name for name, fields in FIELDS_USED.items() if field in fields)
