"""The quantities one tracker measurement records: each a small object that writes its fields and counts its cost.

A measurement at step ``t`` is a loop over :class:`Quantity` objects sharing one :class:`Reading` (the fields of
the :class:`~sharpscope.io.records.Measurement` being made, its ``cost`` and ``errors``, the gradient once
computed). Each quantity writes its own fields (by their names in ``Measurement``: another name is an error),
returns the Hessian-vector products it took (summed into ``cost.hvps``) and, when it names a ``timer``, has
its seconds stored as ``cost[timer]``. A quantity that fails records None for its fields and its one-line
error under ``errors``; the others still run. The record's key order is the order of the quantities.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import torch
from torch import Tensor

from sharpscope.curvature import ConvergenceWarning, lanczos, trace_estimator
from sharpscope.curvature.operators.linear_operator import LinearOperator
from sharpscope.curvature.operators.preconditioned import PreconditionedOperator, adam_optimizer, adam_preconditioner
from sharpscope.curvature.results import EigenResult
from sharpscope.curvature.settings import CurvatureSettings
from sharpscope.errors import ConfigError, SharpscopeError
from sharpscope.io.records import Alignment
from sharpscope.measures import TAKES_M, SharpnessSettings
from sharpscope.measures import measure as sharpness_measure
from sharpscope.track.probe_view import OperatorView, ProbeView

ThresholdFn = Callable[[int, "torch.optim.Optimizer | None", "float | None"], Mapping[str, Any]]


def step_seed(seed: int, step: int, salt: int) -> int:
    """A seed for the random vectors of measurement ``step`` (independent of what came before)."""
    return (int(seed) * 1_000_003 + int(step) * 16 + salt) % (2**62)


def subspace_alignment(u: Tensor, vectors: Tensor) -> tuple[list[float], float] | None:
    """``([cos(u, v_1), ..., cos(u, v_k)], ‖P_k u‖ / ‖u‖)`` for orthonormal columns ``v_i`` of ``vectors``.

    ``cos(u, v_i) = v_iᵀu / ‖u‖`` and ``P_k = V Vᵀ`` projects onto their span, so
    ``‖P_k u‖ / ‖u‖ = (Σ_i cos²(u, v_i))^{1/2} ∈ [0, 1]`` (clipped at 1 against rounding). None when ``u = 0``.
    """
    norm = float(u.norm())
    if norm == 0 or not math.isfinite(norm):
        return None
    coeffs = (vectors.T @ u).double().cpu() / norm
    return coeffs.tolist(), min(1.0, float(coeffs.norm()))


def thresholds_of(threshold: ThresholdFn, step: int, optimizer: torch.optim.Optimizer | None,
                  grad_norm: float | None, errors: dict[str, str]) -> dict[str, Any]:
    """``threshold(step, optimizer, grad_norm)`` as a dict; ``{}`` and the error under ``errors["thresholds"]``
    when it raises a :class:`SharpscopeError`."""
    try:
        return dict(threshold(int(step), optimizer, grad_norm))
    except SharpscopeError as e:
        errors["thresholds"] = str(e)
        return {}


@dataclass(frozen=True)
class Seeds:
    """The seeds of a measurement's random vectors, numbered by ``salt``: from ``(seed, step)``, or with ``fixed``
    from ``seed`` alone (step 0's at every step: common random numbers over steps)."""

    seed: int
    fixed: bool = False

    def __call__(self, step: int, salt: int) -> int:
        """The seed of the random vectors numbered ``salt`` at ``step`` (step 0's at every step when fixed)."""
        return step_seed(self.seed, 0 if self.fixed else step, salt)


@dataclass(frozen=True)
class EigenSolver:
    """Lanczos (``which="LA"``) with a tracker's settings: its ``k``, ``tol``, ``max_iter``, ``block``, start
    vectors from the previous measurement when ``warm_start``, and a seed from ``seeds``."""

    curvature: CurvatureSettings
    seeds: Seeds
    warm_start: bool

    def start(self, previous: Tensor | None, op: LinearOperator) -> Tensor | None:
        """The previous measurement's eigenvectors as the start block, when warm starting and they fit."""
        ok = self.warm_start and previous is not None and previous.shape[0] == op.dim
        return previous if ok else None

    def top(self, op: LinearOperator, v0: Tensor | None, step: int, salt: int, k: int | None = None) -> EigenResult:
        """Top ``k`` (default the settings' ``k``) of ``op`` from ``v0``; an unconverged result is recorded with
        its residuals rather than warned about."""
        c = self.curvature
        extra: dict[str, Any] = {} if k is not None else {"block": c.block}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return lanczos(op, c.k if k is None else k, which="LA", max_iter=c.max_iter, v0=v0,
                           seed=self.seeds(step, salt), **extra, **c.eigen_options())


@dataclass
class Reading:
    """One measurement in progress: the step, the optimizer, the probe (and test) views, and the fields of the
    :class:`~sharpscope.io.records.Measurement` the quantities have written so far (``step`` first)."""

    step: int
    optimizer: torch.optim.Optimizer | None
    probe: OperatorView
    test: ProbeView | None
    fields: dict[str, Any]
    cost: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    grad: Tensor | None = None  # the whole gradient (None for a sharded model or when not computed)
    grad_norm: float | None = None


class Quantity:
    """One thing a measurement records. :meth:`measure` writes its fields into ``reading.fields`` and returns
    the Hessian-vector products it took; ``timer`` names the ``cost`` entry of its seconds (None: untimed)."""

    timer: ClassVar[str | None] = None

    def check(self, optimizer: torch.optim.Optimizer | None) -> None:
        """Raise :class:`ConfigError` before any work when this quantity cannot be measured with ``optimizer``."""

    def measure(self, reading: Reading) -> int:
        """Write this quantity's fields into ``reading.fields``; return the Hessian-vector products taken."""
        raise NotImplementedError


@dataclass
class LossAccuracy(Quantity):
    """``train_loss``/``train_acc`` on the probe set and ``test_loss``/``test_acc`` on the test set (if any);
    with ``predictions``, ``test_correct``: which test examples the model gets right, packed."""

    predictions: bool = False
    timer: ClassVar[str | None] = "eval_seconds"

    def measure(self, reading: Reading) -> int:
        """Loss and accuracy on the probe and test sets (and the test predictions when asked)."""
        rec = reading.fields
        rec["train_loss"], rec["train_acc"] = reading.probe.evaluate()
        if reading.test is not None:
            rec["test_loss"], rec["test_acc"] = reading.test.evaluate()
            if self.predictions:
                rec["test_correct"] = reading.test.packed_correct()
        return 0


@dataclass
class TopEigenvalues(Quantity):
    """``warm_start``, ``eigenvalues``, ``residuals``, ``converged``, ``hvps``, ``seconds`` and ``lanczos_steps``
    of the top ``k`` of ``H``; keeps the eigenvectors (:attr:`vectors`) for the next warm start, the alignment
    and SAM's batch sharpness (None after a failure, recorded under ``errors["eigenvalues"]``)."""

    solver: EigenSolver
    vectors: Tensor | None = None
    salt: ClassVar[int] = 1  # of the start-vector seed
    error_key: ClassVar[str] = "eigenvalues"

    def operator(self, reading: Reading) -> LinearOperator:
        """The operator whose top eigenvalues are read: the probe set's Hessian."""
        return reading.probe.op

    def write(self, rec: dict[str, Any], top: EigenResult | None, warm: bool) -> None:
        """The eigenvalues, residuals, convergence and cost into ``rec`` (None fields when Lanczos failed)."""
        rec["warm_start"] = warm
        if top is None:
            rec.update(eigenvalues=None, residuals=None, converged=False, hvps=None, seconds=None)
        else:
            rec.update(eigenvalues=tuple(top.eigenvalues.tolist()), residuals=tuple(top.residuals.tolist()),
                       converged=top.converged,
                       hvps=top.hvps, seconds=top.seconds, lanczos_steps=top.settings["steps"])

    def measure(self, reading: Reading) -> int:
        """Lanczos for the top ``k``, warm-started from the previous eigenvectors when allowed."""
        v0 = self.solver.start(self.vectors, reading.probe.op)
        try:
            top = self.solver.top(self.operator(reading), v0, reading.step, self.salt)
        except SharpscopeError as e:
            self.write(reading.fields, None, v0 is not None)
            reading.errors[self.error_key] = str(e)
            self.vectors = None
            return 0
        self.write(reading.fields, top, v0 is not None)
        self.vectors = None if top.eigenvectors is None else top.eigenvectors.detach().clone()
        return top.hvps


@dataclass
class PreconditionedEigenvalues(TopEigenvalues):
    """``preconditioned_eigenvalues``, ``preconditioned_residuals`` and ``preconditioned_hvps``: top ``k`` of
    ``P^{-1/2} H P^{-1/2}`` with Adam's ``P = diag(√v̂ + ε)``, warm-started from its own previous vectors.
    None values and the reason in ``errors`` before Adam's first step (no ``v̂``) or when Lanczos fails."""

    salt: ClassVar[int] = 3
    error_key: ClassVar[str] = "preconditioned_eigenvalues"

    def check(self, optimizer: torch.optim.Optimizer | None) -> None:
        """Refuse an optimizer that is not Adam/AdamW (the preconditioner needs its second moments)."""
        try:
            adam_optimizer(optimizer)
        except ConfigError:
            got = "no optimizer" if optimizer is None else type(optimizer).__name__
            raise ConfigError("preconditioned=True measures lambda_max(P^-1 H) with Adam's P = diag(sqrt(v_hat) + eps) "
                              f"and needs torch.optim.Adam/AdamW (or SAM over one) passed to measure; got {got}. "
                              "Set preconditioned=False for other optimizers", argument="preconditioned") from None

    def operator(self, reading: Reading) -> LinearOperator:
        """``P⁻¹H`` with ``P = diag(√v̂ + ε)`` from the optimizer's state."""
        return PreconditionedOperator(reading.probe.op, adam_preconditioner(reading.optimizer, reading.probe.objective))  # type: ignore[arg-type]

    def write(self, rec: dict[str, Any], top: EigenResult | None, warm: bool) -> None:
        """The preconditioned eigenvalues and residuals into ``rec``."""
        rec.update(preconditioned_eigenvalues=None if top is None else tuple(top.eigenvalues.tolist()),
                   preconditioned_residuals=None if top is None else tuple(top.residuals.tolist()),
                   preconditioned_hvps=None if top is None else top.hvps)


@dataclass
class Trace(Quantity):
    """``trace``: ``{"estimate", "stderr", "per_param" = estimate / d, "method", "hvps", "seconds"}`` of
    ``tr(H)`` by the settings' ``trace_method`` with ``trace_matvecs`` products (probes seeded by the step)."""

    curvature: CurvatureSettings
    seeds: Seeds

    def measure(self, reading: Reading) -> int:
        """``tr(H)`` by the settings' estimator (Hutchinson or Hutch++), its standard error and cost."""
        c, op = self.curvature, reading.probe.op
        try:
            tr = trace_estimator(c.trace_method)(op, c.trace_matvecs, seed=self.seeds(reading.step, 2),
                                                 memory_budget=c.memory_budget)
        except SharpscopeError as e:
            reading.fields["trace"] = None
            reading.errors["trace"] = str(e)
            return 0
        reading.fields["trace"] = {"estimate": tr.estimate, "stderr": tr.stderr, "per_param": tr.estimate / op.global_dim,
                                   "method": c.trace_method, "hvps": tr.hvps, "seconds": tr.seconds}
        return tr.hvps


@dataclass
class SharpnessMeasures(Quantity):
    """``sharpness``: ``{name: compact result}`` of each named measure of :mod:`sharpscope.measures` (value,
    stderr, convergence, passes, seconds, details; its settings go to the record's ``settings``), seeded by
    the step and with ``m`` only for the measures that take it. A failed measure is None, its error under
    ``errors["sharpness.NAME"]``."""

    names: tuple[str, ...]
    settings: SharpnessSettings
    seeds: Seeds
    timer: ClassVar[str | None] = "sharpness_seconds"

    def measure(self, reading: Reading) -> int:
        """Each named sharpness measure, seeded from the step, as a compact record."""
        base = replace(self.settings, seed=self.seeds(reading.step, 4))
        out: dict[str, Any] = {}
        for name in self.names:
            try:
                result = sharpness_measure(name, reading.probe.objective, base if name in TAKES_M else replace(base, m=None))
            except SharpscopeError as e:
                out[name] = None
                reading.errors[f"sharpness.{name}"] = str(e)
                continue
            record = result.to_dict()
            record.pop("settings")
            record["details"] = {k: v for k, v in result.details.items() if k != "per_set"}
            out[name] = record
        reading.fields["sharpness"] = out
        return 0


@dataclass
class GradientNorm(Quantity):
    """``grad_norm`` = ``‖∇L(θ_t)‖`` on the probe set (one gradient); keeps the gradient for the alignment."""

    timer: ClassVar[str | None] = "grad_seconds"

    def measure(self, reading: Reading) -> int:
        """``‖∇L‖`` on the probe set."""
        reading.grad, reading.grad_norm = reading.probe.gradient()
        reading.fields["grad_norm"] = reading.grad_norm
        return 0


@dataclass
class GradientAlignment(Quantity):
    """``alignment``: ``{"grad_cos", "grad_fraction"}`` of the gradient in the span of the top eigenvectors, each
    signed so that ``gᵀv_i ≥ 0``; keeps ``θ_t`` and the signs (:attr:`pending`) until :meth:`update_record`
    sees ``θ_{t+1}``. None when Lanczos failed (nothing to align with)."""

    top: TopEigenvalues
    pending: dict[str, Any] | None = None

    def measure(self, reading: Reading) -> int:
        """``cos(g, v_i)`` of the gradient with each top eigenvector and the fraction of ``g`` in their span."""
        self.pending = None
        grad, vectors = reading.grad, self.top.vectors
        if vectors is None or grad is None:
            reading.fields["alignment"] = None
            return 0
        vectors = vectors.to(grad.device, grad.dtype)
        signs = torch.where(vectors.T @ grad < 0, -1.0, 1.0).to(grad.dtype)
        self.pending = {"step": reading.step, "theta": reading.probe.objective.parameter_vector(), "signs": signs}
        found = subspace_alignment(grad, vectors * signs)
        reading.fields["alignment"] = None if found is None else {"grad_cos": found[0], "grad_fraction": found[1]}
        return 0

    def update_record(self, step: int, parameters: Callable[[], Tensor]) -> Alignment | None:
        """The :class:`~sharpscope.io.records.Alignment` record of ``Δ = θ_{t+1} − θ_t`` for the measurement at
        ``step`` (``parameters()`` gives ``θ_{t+1}``, asked only then), or None when no measurement of ``step`` is
        pending; a pending measurement of another step is dropped."""
        pending, self.pending = self.pending, None
        vectors = self.top.vectors
        if pending is None or pending["step"] != int(step) or vectors is None:
            return None
        theta = parameters()
        if theta.shape != pending["theta"].shape:
            return None
        delta = theta - pending["theta"].to(theta.device, theta.dtype)
        found = subspace_alignment(delta, vectors.to(theta.device, theta.dtype) * pending["signs"].to(theta.device, theta.dtype))
        return Alignment.made({"step": int(step), "update_norm": float(delta.norm()),
                               "update_cos": None if found is None else found[0],
                               "update_fraction": None if found is None else found[1]})


@dataclass
class SamStep(Quantity):
    """Writes nothing into the measurement; for a SAM optimizer, marks ``step`` so that the tracker's
    ``after_step`` records the ``"sam_batch"`` norm of the mini-batch gradient that SAM's step normalised."""

    step: int | None = None

    def mark(self, step: int, optimizer: torch.optim.Optimizer | None) -> None:
        """Expect the ``"sam_batch"`` record of ``step`` when ``optimizer`` is SAM; forget any other step."""
        from sharpscope.optim import SAM

        self.step = step if isinstance(optimizer, SAM) else None

    def measure(self, reading: Reading) -> int:
        """Mark the step so that the SAM step's batch record follows; no products."""
        self.mark(reading.step, reading.optimizer)
        return 0


@dataclass
class Thresholds(Quantity):
    """``thresholds``: ``threshold(step, optimizer, grad_norm)`` (``{}`` and ``errors["thresholds"]`` on failure)."""

    threshold: ThresholdFn

    def measure(self, reading: Reading) -> int:
        """The thresholds that apply to the optimizer at this step (2/η, momentum, Adam, SAM's edge)."""
        reading.fields["thresholds"] = thresholds_of(self.threshold, reading.step, reading.optimizer,
                                                     reading.grad_norm, reading.errors)
        return 0
