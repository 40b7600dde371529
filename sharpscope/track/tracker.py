"""A sharpness tracker: a callback for any training loop that measures curvature every k steps.

At a measured step ``t`` with parameters ``θ_t`` the tracker evaluates, on a *fixed* probe set
(the objective ``L(θ) = (1/N) Σ_b n_b ℓ_b(θ)`` of :class:`~sharpscope.curvature.Objective`):

* the top ``k`` eigenvalues of ``H = ∇²L(θ_t)`` by Lanczos (``which="LA"``), warm-started from
  the previous measurement's eigenvectors (``v0 = Σ_i y_i``), with their Ritz residuals
  ``‖H y − θ y‖/|θ|`` and the number of Hessian-vector products;
* optionally ``tr(H)`` by Hutch++ or Hutchinson, with its standard error, and ``tr(H)/d``;
* ``‖∇L(θ_t)‖`` at the unperturbed point (the ``‖g‖`` of the SAM-edge);
* the threshold matching the optimizer (:func:`~sharpscope.track.thresholds.default_thresholds`
  or any callable ``(step, optimizer, grad_norm) -> dict``);
* loss and accuracy on the probe (training) set and on an optional fixed test set;
* the cost of each part (HVPs, seconds) and the settings (probe size, BN mode, HVP mode, dtype);
* optionally (``alignment=True``) how the gradient and the optimizer's update lie in the top-``k``
  eigenspace: see :func:`subspace_alignment` and :meth:`SharpnessTracker.after_step`;
* optionally (``sharpness=("worst", "average", ...)``) sharpness measures of :mod:`sharpscope.measures`,
  each with its value, uncertainty and cost;
* optionally (``preconditioned=True``, for Adam/AdamW or SAM over Adam) the top ``k`` eigenvalues of
  ``P^{-1/2} H P^{-1/2}`` with Adam's ``P = diag(√v̂ + ε)``, i.e. of ``P⁻¹H``: the quantity that
  Adam's edge ``(2+2β₁)/(η(1−β₁))`` bounds, which λ_max(H) does not;
* optionally (``update_curvature="hvp"`` or ``"fd"``), every ``update_every`` steps, the curvature along the
  update the optimizer takes, ``κ_u = uᵀHu/‖u‖²`` with ``u = θ_{t+1} − θ_t`` (and ``uᵀHu/uᵀPu`` for Adam),
  in one Hessian-vector product or three forward passes: :mod:`sharpscope.track.update_curvature`,
  :meth:`SharpnessTracker.before_step` and :meth:`SharpnessTracker.after_step`.

Nothing is mutated: parameters, gradients (``.grad``), train/eval flags, BatchNorm buffers and
every random number generator are as before the call, so measuring never changes training.
Random start vectors and probes come from generators seeded with ``(seed, step)``; the same step
gives the same record whatever happened before (except for the warm start, whose vectors are
part of :meth:`SharpnessTracker.state_dict`). With ``probes="fixed"`` they are seeded by ``seed``
alone: every step draws the same trace probes and start vectors (common random numbers over steps),
so a change in ``tr(H)`` between two steps comes from the weights, not from redrawn probes.

Example, in a hand-written loop:

    >>> _ = torch.manual_seed(0)
    >>> model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
    >>> x, y, mse = torch.randn(32, 3), torch.randn(32, 1), nn.MSELoss()
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.05)
    >>> records = []
    >>> tracker = SharpnessTracker((x, y), mse, every=5, curvature=CurvatureSettings(k=2), sink=records.append)
    >>> for step in range(11):
    ...     _ = tracker.maybe_measure(step, model, opt)
    ...     opt.zero_grad(); mse(model(x), y).backward(); opt.step()        # one optimizer step
    >>> [r["step"] for r in records], len(records[0]["eigenvalues"]), "edge" in records[0]["thresholds"]
    ([0, 5, 10], 2, True)
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, replace
from typing import Any

import torch
from torch import Tensor, nn

from sharpscope.curvature import ConvergenceWarning, HessianOperator, Objective, lanczos, trace_estimator
from sharpscope.curvature.fits import check_model_fits
from sharpscope.curvature.operators.distributed import world_size
from sharpscope.curvature.operators.linear_operator import LinearOperator
from sharpscope.curvature.operators.objective import LossFn
from sharpscope.curvature.operators.preconditioned import PreconditionedOperator, adam_optimizer, adam_preconditioner
from sharpscope.curvature.operators.sharded import ShardedHessianOperator, is_sharded
from sharpscope.curvature.results import EigenResult
from sharpscope.curvature.settings import DEFAULTS, CurvatureSettings
from sharpscope.data import ArrayDataset
from sharpscope.errors import ConfigError, SharpscopeError
from sharpscope.io.predictions import pack_correct
from sharpscope.measures import TAKES_M, SharpnessSettings, check_measure_names
from sharpscope.measures import measure as sharpness_measure
from sharpscope.measures.settings import DEFAULTS as SHARPNESS_DEFAULTS
from sharpscope.track.thresholds import batch_sam_edge, default_thresholds
from sharpscope.track.update_curvature import curvature_along, curvature_along_sharded, resolve_method
from sharpscope.validation import check_bool, check_choice, check_int, check_seed, check_type

ThresholdFn = Callable[[int, "torch.optim.Optimizer | None", "float | None"], Mapping[str, Any]]


def _pair(data: Any) -> Any:
    return (data.x, data.y) if isinstance(data, ArrayDataset) else data


def evaluate(objective: Objective) -> tuple[float, float | None]:
    """Mean loss and accuracy of the objective's model over its batches, in its mode
    (:meth:`Objective.evaluate <sharpscope.curvature.Objective.evaluate>` at the current parameters):
    ``(Σ_b n_b ℓ_b / N, Σ_b n_b acc_b / N)``, summed over ranks under a process group; accuracy is None
    when outputs are not class scores. Non-finite losses are returned as they are, not raised."""
    loss, acc = objective.evaluate()
    return float(loss), None if acc is None else float(acc)


def _local(p: Tensor) -> Tensor:
    """This rank's slice of a parameter sharded with ``fully_shard`` (a distributed tensor)."""
    return p.to_local()  # type: ignore[attr-defined]


#: How the random vectors of a measurement are seeded: ``(seed, step)``, or ``seed`` alone (those of step 0).
PROBES = ("per-step", "fixed")


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


def _is_sam(optimizer: torch.optim.Optimizer | None) -> bool:
    from sharpscope.optim import SAM

    return isinstance(optimizer, SAM)


class SharpnessTracker:
    """Measure the Hessian spectrum and friends every ``every`` steps (see the module docstring).

    Args:
        probe_data: the fixed probe set: an ``(x, y)`` pair, an :class:`ArrayDataset`, or an
            iterable of ``(x, y)`` batches. It must define the objective the optimizer descends
            (same loss, same examples for full-batch training) or thresholds are off.
        loss_fn: ``(outputs, targets) -> mean loss over the batch`` (e.g. :func:`sharpscope.losses.mse`).
        every: measure when ``step % every == 0``.
        curvature: how each measurement is computed (:class:`~sharpscope.curvature.CurvatureSettings`:
            the top ``k`` eigenvalues, Lanczos' ``tol``/``max_iter``/``stop``, the trace estimator,
            BatchNorm mode, product mode...). By default no gradient graph is cached between products
            (``cache_graphs=True`` keeps them: same values, fewer passes, their activation memory held
            between measurements). ``hvp_mode="auto"`` picks the faster exact mode by timing (once per
            tracker, kept in :meth:`state_dict`); a fixed mode makes records reproducible to the last bit.
        trace: also estimate ``tr(H)`` with ``curvature.trace_method`` and ``curvature.trace_matvecs`` products.
        batch_size: physical batch size of the probe (memory only: the objective is the same).
        test_data: optional fixed test set for test loss and accuracy.
        threshold: ``(step, optimizer, grad_norm) -> dict`` stored as ``thresholds``.
        grad_norm: measure ``‖∇L‖`` (one gradient over the probe set).
        warm_start: start Lanczos from the previous eigenvectors.
        seed: seed of the random start vectors and trace probes (combined with the step).
        probes: ``"per-step"`` draws them afresh at each step (from ``(seed, step)``); ``"fixed"`` draws the
            same ones at every step (from ``seed`` alone, the vectors ``"per-step"`` draws at step 0).
        sink: called with every record: ``RunDirectory.append_metric``, or any sink of
            :mod:`sharpscope.track.sinks` (JSONL, CSV, TensorBoard, W&B; several with ``MultiSink``).
        alignment: at each measurement also record ``grad_cos`` (``cos(g, v_i)`` for the top-``k``
            eigenvectors, each signed so that ``gᵀv_i ≥ 0``, since eigenvectors have no sign) and
            ``grad_fraction`` = ``‖P_k g‖/‖g‖``, with ``g = ∇L`` on the probe set; and, once
            :meth:`after_step` sees the update ``Δ = θ_{t+1} − θ_t`` that the optimizer took right
            after the measurement at ``t``, a record ``{"kind": "alignment", "step": t}`` with
            ``update_cos`` (``cos(Δ, v_i)``, same signs: negative means the update descends along
            ``v_i``), ``update_fraction`` = ``‖P_k Δ‖/‖Δ‖`` and ``update_norm``. It needs the
            gradient, so ``grad_norm`` is recorded too.
        preconditioned: also record ``preconditioned_eigenvalues`` (top ``k`` of ``P^{-1/2} H P^{-1/2}``,
            ``P`` = :func:`~sharpscope.curvature.adam_preconditioner` of the optimizer passed to
            :meth:`measure`), ``preconditioned_residuals`` and ``preconditioned_hvps`` (also in
            ``cost.hvps``), by Lanczos with the same ``k``/``tol``, warm-started from its own previous
            vectors. The optimizer must be Adam/AdamW or wrap one as ``base_optimizer`` (SAM over Adam),
            else :meth:`measure` raises :class:`ConfigError`; before Adam's first step (no ``v̂``) the
            three are None and ``errors["preconditioned_eigenvalues"]`` says why.
        update_curvature: ``"hvp"`` (or True) or ``"fd"`` (None or False: off): at every step ``t`` with
            ``t % update_every == 0`` whose parameters :meth:`before_step` captured, :meth:`after_step`
            records ``{"kind": "update_curvature", "step": t, "method", "kappa", "kappa_preconditioned",
            "uHu", "uPu", "update_norm", "cost": {"hvps", "forwards", "seconds"}, "thresholds", ...}``
            (:func:`~sharpscope.track.update_curvature.curvature_along`; ``kappa_preconditioned`` with Adam's
            ``P`` after the step, the denominator that step divided by, for Adam/AdamW or SAM over one).
        update_every: steps between update-curvature readings (1: every step).
        test_predictions: with ``test_data``, also record ``test_correct``, which test examples the model
            classifies right (packed bits, :mod:`sharpscope.io.predictions`), so that two runs on one test
            set can be compared example by example (:func:`sharpscope.experiments.statistics.paired_accuracy`).
        sharpness: names of :data:`sharpscope.measures.MEASURES` to record under ``sharpness`` (each
            measure's value, stderr, convergence, forward/backward counts, seconds and details), computed
            with ``sharpness_settings`` but seeded by ``(seed, step)`` and with ``m`` only for the measures
            that take it; a measure that fails records None and its one-line error under
            ``errors["sharpness.NAME"]``.
    """

    def __init__(self, probe_data: Any, loss_fn: LossFn, *, every: int, curvature: CurvatureSettings = DEFAULTS,
                 trace: bool = False, batch_size: int | None = None, test_data: Any = None,
                 threshold: ThresholdFn | None = default_thresholds,
                 grad_norm: bool = True, warm_start: bool = True, seed: int = 0,
                 sink: Callable[[dict[str, Any]], Any] | None = None, alignment: bool = False,
                 preconditioned: bool = False, update_curvature: str | bool | None = None,
                 update_every: int = 1, test_predictions: bool = False, sharpness: Sequence[str] = (),
                 sharpness_settings: SharpnessSettings = SHARPNESS_DEFAULTS, probes: str = "per-step") -> None:
        check_int("every", every, low=1)
        self.probes = check_choice("probes", probes, PROBES)
        check_int("update_every", update_every, low=1)
        method = resolve_method(update_curvature)
        self.sharpness = check_measure_names(sharpness, "sharpness") if sharpness else ()
        check_type("sharpness_settings", sharpness_settings, SharpnessSettings, "a SharpnessSettings")
        self.sharpness_settings = sharpness_settings
        if not isinstance(curvature, CurvatureSettings):
            raise ConfigError(f"curvature must be a CurvatureSettings, got {type(curvature).__name__}",
                              argument="curvature")
        for name, flag in (("trace", trace), ("grad_norm", grad_norm), ("warm_start", warm_start),
                           ("alignment", alignment), ("preconditioned", preconditioned),
                           ("test_predictions", test_predictions)):
            check_bool(name, flag)
        check_int("batch_size", batch_size, low=1, optional=True)
        check_seed("seed", seed)
        for name, fn in (("loss_fn", loss_fn), ("threshold", threshold), ("sink", sink)):
            if fn is not None and not callable(fn):
                raise ConfigError(f"{name} must be callable{'' if name == 'loss_fn' else ' or None'}, got "
                                  f"{type(fn).__name__}", argument=name)
        self.curvature = curvature
        self.probe_data, self.test_data = _pair(probe_data), _pair(test_data)
        self.loss_fn = loss_fn
        self.every, self.trace, self.batch_size = every, trace, batch_size
        self.threshold = threshold
        self.grad_norm, self.warm_start, self.seed, self.sink = grad_norm, warm_start, seed, sink
        self._key: tuple[int, ...] | None = None
        self._objective: Objective | None = None
        self._test: Objective | None = None
        self._op: HessianOperator | ShardedHessianOperator | None = None
        self._test_op: ShardedHessianOperator | None = None  # evaluates the test set of a sharded model
        self._eigenvectors: Tensor | None = None
        self._saved_modes: dict[str, str] = {}
        self.last: dict[str, Any] | None = None
        self.alignment = alignment
        self._pending: dict[str, Any] | None = None  # θ_t and eigenvector signs until after_step(t)
        self._sam_step: int | None = None  # a measured step whose SAM batch norm after_step records
        self.preconditioned = preconditioned
        self.test_predictions = test_predictions
        self._pre_eigenvectors: Tensor | None = None  # warm start of the preconditioned Lanczos
        self.update_curvature, self.update_every = method, update_every
        self._before: dict[str, Any] | None = None  # {"step": t, "params": θ_t} from before_step until after_step(t)
        self._update_op: HessianOperator | None = None  # uncached products for the update curvature
        self.last_update: dict[str, Any] | None = None

    # ------------------------------------------------------------------------------ set-up
    def due(self, step: int) -> bool:
        """Whether ``step`` is a measurement step (``step % every == 0``)."""
        return step % self.every == 0

    def _objects(self, model: nn.Module) -> tuple[Objective, HessianOperator | ShardedHessianOperator]:
        check_type("model", model, nn.Module, "a torch.nn.Module")
        key = (id(model), *(id(p) for p in model.parameters()))
        if self._key != key or self._objective is None or self._op is None:
            sharded = is_sharded(model)
            if sharded and (self.alignment or self.preconditioned):
                used = [name for name, on in (("alignment=True", self.alignment),
                                              ("preconditioned=True", self.preconditioned)) if on]
                raise ConfigError(f"{' and '.join(used)} need whole vectors and do not apply to a model sharded "
                                  "with fully_shard", argument="model")
            for name, data in (("probe_data", self.probe_data), ("test_data", self.test_data)):
                if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
                    check_model_fits(model, self.loss_fn, data[0], data[1], name=name)  # one line, not a deep error
            self._objective = Objective(model, self.loss_fn, self.probe_data, bn=self.curvature.bn,
                                        batch_size=self.batch_size, validate=False,
                                        weight_precision="native" if sharded else self.curvature.weight_precision)
            self._test = None if self.test_data is None else Objective(
                model, self.loss_fn, self.test_data, bn=self.curvature.bn, batch_size=self.batch_size, validate=False)
            if sharded:
                self._op = ShardedHessianOperator(self._objective)
                self._test_op = None if self._test is None else ShardedHessianOperator(self._test)
            else:
                self._op = self._operator(self._objective)
            self._update_op = None
            if self.curvature.hvp_mode == "auto" and self._saved_modes and isinstance(self._op, HessianOperator):
                self._op.modes.update(self._saved_modes)
            self._key = key
        return self._objective, self._op

    def _seed(self, step: int, salt: int) -> int:
        """The seed of the random vectors numbered ``salt`` at ``step`` (step 0's at every step with fixed probes)."""
        return step_seed(self.seed, 0 if self.probes == "fixed" else step, salt)

    def _operator(self, objective: Objective) -> HessianOperator:
        """The Hessian of ``objective`` with this tracker's product settings."""
        return self.curvature.hessian(objective)

    # ------------------------------------------------------------------------- measuring
    def maybe_measure(self, step: int, model: nn.Module,
                      optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any] | None:
        """:meth:`measure` if :meth:`due` ``(step)``, else None."""
        return self.measure(step, model, optimizer) if self.due(step) else None

    def measure(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any]:
        """Measure now and return the record (also passed to ``sink``). See the module docstring."""
        start = time.perf_counter()
        if self.preconditioned:
            self._check_adam(optimizer)
        objective, op = self._objects(model)
        rec: dict[str, Any] = {"kind": "measurement", "step": int(step)}
        cost: dict[str, Any] = {}
        errors: dict[str, str] = {}

        t = time.perf_counter()
        sharded = isinstance(op, ShardedHessianOperator)
        rec["train_loss"], rec["train_acc"] = op.evaluate() if isinstance(op, ShardedHessianOperator) else evaluate(objective)
        if self._test is not None:
            rec["test_loss"], rec["test_acc"] = (self._test_op.evaluate() if self._test_op is not None
                                                 else evaluate(self._test))
            if self.test_predictions:
                rec["test_correct"] = self._test_correct(self._test)
        cost["eval_seconds"] = time.perf_counter() - t

        v0 = self._start_vectors(self._eigenvectors, op)
        rec["warm_start"] = v0 is not None
        lanczos_hvps = 0
        try:
            top = self._top_eigenpairs(op, v0, step, salt=1)
            rec["eigenvalues"] = top.eigenvalues.tolist()
            rec["residuals"] = top.residuals.tolist()
            rec["converged"] = top.converged
            rec["hvps"] = lanczos_hvps = top.hvps
            rec["seconds"] = top.seconds
            rec["lanczos_steps"] = top.settings["steps"]
            if top.eigenvectors is not None:
                self._eigenvectors = top.eigenvectors.detach().clone()
        except SharpscopeError as e:
            rec.update(eigenvalues=None, residuals=None, converged=False, hvps=None, seconds=None)
            errors["eigenvalues"] = str(e)
            self._eigenvectors = None
        if self.preconditioned and isinstance(op, HessianOperator):  # refused for sharded models in _objects
            lanczos_hvps += self._measure_preconditioned(step, objective, op, optimizer, rec, errors)

        trace_hvps = 0
        if self.trace:
            try:
                c = self.curvature
                tr = trace_estimator(c.trace_method)(op, c.trace_matvecs, seed=self._seed(step, 2),
                                                     memory_budget=c.memory_budget)
                trace_hvps = tr.hvps
                rec["trace"] = {"estimate": tr.estimate, "stderr": tr.stderr, "per_param": tr.estimate / op.global_dim,
                                "method": c.trace_method, "hvps": tr.hvps, "seconds": tr.seconds}
            except SharpscopeError as e:
                rec["trace"] = None
                errors["trace"] = str(e)

        if self.sharpness:
            t = time.perf_counter()
            rec["sharpness"] = self._measure_sharpness(step, objective, errors)
            cost["sharpness_seconds"] = time.perf_counter() - t

        gnorm: float | None = None
        if self.grad_norm or self.alignment:
            t = time.perf_counter()
            grad = None if sharded else objective.gradient()
            gnorm = op.gradient_norm() if isinstance(op, ShardedHessianOperator) else float(grad.norm())  # type: ignore[union-attr]
            rec["grad_norm"] = gnorm
            cost["grad_seconds"] = time.perf_counter() - t
        if self.alignment:
            rec["alignment"] = self._start_alignment(step, objective, grad)  # type: ignore[arg-type]

        self._sam_step = int(step) if _is_sam(optimizer) else None
        if self.threshold is not None:
            try:
                rec["thresholds"] = dict(self.threshold(int(step), optimizer, gnorm))
            except SharpscopeError as e:
                rec["thresholds"] = {}
                errors["thresholds"] = str(e)

        cost.update(hvps=lanczos_hvps + trace_hvps, seconds=time.perf_counter() - start)
        rec["cost"] = cost
        rec["settings"] = self.settings(objective, op)
        if errors:
            rec["errors"] = errors
        if isinstance(op, HessianOperator):
            op.release_graphs()  # training needs the memory until the next measurement
        self.last = rec
        self._emit(rec)
        return rec

    def _test_correct(self, test: Objective) -> dict[str, Any] | None:
        """Which test examples the model gets right, packed (:mod:`sharpscope.io.predictions`); None when the
        outputs are not class scores, or when several processes each hold a share of the test set."""
        if world_size() > 1:
            return None
        correct = test.correct_examples()
        return None if correct is None else pack_correct(correct.numpy())

    def _measure_sharpness(self, step: int, objective: Objective, errors: dict[str, str]) -> dict[str, Any]:
        """The sharpness measures of one step, each a compact record (its settings go to ``settings``)."""
        base = replace(self.sharpness_settings, seed=self._seed(step, 4))
        out: dict[str, Any] = {}
        for name in self.sharpness:
            try:
                result = sharpness_measure(name, objective, base if name in TAKES_M else replace(base, m=None))
            except SharpscopeError as e:
                out[name] = None
                errors[f"sharpness.{name}"] = str(e)
                continue
            record = result.to_dict()
            record.pop("settings")
            record["details"] = {k: v for k, v in result.details.items() if k != "per_set"}
            out[name] = record
        return out

    def _emit(self, rec: dict[str, Any]) -> None:
        """Pass ``rec`` to ``sink``; an exception of the sink's own (not a storage error, which the
        runner reports with its path) becomes one line naming ``sink``."""
        if self.sink is None:
            return
        try:
            self.sink(rec)
        except (SharpscopeError, OSError):
            raise
        except Exception as e:
            raise ConfigError(f"sink {getattr(self.sink, '__qualname__', type(self.sink).__name__)} raised "
                              f"{type(e).__name__} on the {rec.get('kind', 'measurement')} record of step "
                              f"{rec.get('step')}: {str(e).splitlines()[0] if str(e) else ''}",
                              argument="sink") from e

    def _start_vectors(self, previous: Tensor | None, op: LinearOperator) -> Tensor | None:
        """The previous measurement's eigenvectors as Lanczos' start block, when warm starting and they fit."""
        ok = self.warm_start and previous is not None and previous.shape[0] == op.dim
        return previous if ok else None

    def _top_eigenpairs(self, op: LinearOperator, v0: Tensor | None, step: int, salt: int) -> EigenResult:
        """Top ``k`` of ``op`` by Lanczos from ``v0``, seeded by ``(seed, step, salt)``; an unconverged
        result is recorded with its residuals rather than warned about."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            c = self.curvature
            return lanczos(op, c.k, which="LA", max_iter=c.max_iter, v0=v0, seed=self._seed(step, salt),
                           block=c.block, **c.eigen_options())

    @staticmethod
    def _check_adam(optimizer: torch.optim.Optimizer | None) -> None:
        """Raise :class:`ConfigError` unless ``optimizer`` is (or wraps, as ``base_optimizer``) Adam/AdamW."""
        try:
            adam_optimizer(optimizer)
        except ConfigError:
            got = "no optimizer" if optimizer is None else type(optimizer).__name__
            raise ConfigError("preconditioned=True measures lambda_max(P^-1 H) with Adam's P = diag(sqrt(v_hat) + eps) "
                              f"and needs torch.optim.Adam/AdamW (or SAM over one) passed to measure; got {got}. "
                              "Set preconditioned=False for other optimizers", argument="preconditioned") from None

    def _measure_preconditioned(self, step: int, objective: Objective, op: HessianOperator,
                                optimizer: torch.optim.Optimizer | None, rec: dict[str, Any],
                                errors: dict[str, str]) -> int:
        """Top ``k`` of ``P^{-1/2} H P^{-1/2}`` into ``rec``; returns its HVPs. None values and the reason in
        ``errors`` when Adam has no state yet (before its first step) or Lanczos fails."""
        v0 = self._start_vectors(self._pre_eigenvectors, op)
        try:
            pre = PreconditionedOperator(op, adam_preconditioner(optimizer, objective))  # type: ignore[arg-type]
            top = self._top_eigenpairs(pre, v0, step, salt=3)
        except SharpscopeError as e:
            rec.update(preconditioned_eigenvalues=None, preconditioned_residuals=None, preconditioned_hvps=None)
            errors["preconditioned_eigenvalues"] = str(e)
            self._pre_eigenvectors = None
            return 0
        rec.update(preconditioned_eigenvalues=top.eigenvalues.tolist(), preconditioned_residuals=top.residuals.tolist(),
                   preconditioned_hvps=top.hvps)
        self._pre_eigenvectors = None if top.eigenvectors is None else top.eigenvectors.detach().clone()
        return top.hvps

    def _start_alignment(self, step: int, objective: Objective, grad: Tensor) -> dict[str, Any] | None:
        """``grad_cos`` and ``grad_fraction`` of this measurement; keep ``θ_t`` and the signs for :meth:`after_step`."""
        self._pending = None
        if self._eigenvectors is None:  # Lanczos failed: nothing to align with
            return None
        vectors = self._eigenvectors.to(grad.device, grad.dtype)
        signs = torch.where(vectors.T @ grad < 0, -1.0, 1.0).to(grad.dtype)
        self._pending = {"step": int(step), "theta": objective.parameter_vector(), "signs": signs}
        found = subspace_alignment(grad, vectors * signs)
        return None if found is None else {"grad_cos": found[0], "grad_fraction": found[1]}

    def expect_batch_record(self, step: int, optimizer: torch.optim.Optimizer | None) -> None:
        """Have :meth:`after_step` ``(step)`` record SAM's batch gradient norm, as after a measurement
        at ``step`` (for a resumed run whose measurement at ``step`` was stored before a crash)."""
        self._sam_step = int(step) if _is_sam(optimizer) else None

    def wants_batch_record(self, step: int) -> bool:
        """Whether :meth:`after_step` ``(step)`` will record SAM's mini-batch gradient norm."""
        return self._sam_step == int(step)

    def batch_sharpness(self, step: int, model: nn.Module, batch: tuple[Tensor, Tensor]) -> dict[str, Any]:
        """λ_max of the loss on one mini-batch ``batch`` at the model's current weights (Lanczos, k = 1,
        this tracker's ``tol``, ``hvp_mode`` and BatchNorm mode; warm-started from the last measured top
        eigenvector): ``{"eigenvalue", "residual", "converged", "examples", "hvps", "seconds"}``."""
        objective = Objective(model, self.loss_fn, batch, bn=self.curvature.bn, batch_size=self.batch_size,
                              validate=False, weight_precision=self.curvature.weight_precision)
        op = self._operator(objective)
        previous = None if self._eigenvectors is None else self._eigenvectors[:, :1]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            top = lanczos(op, 1, which="LA", max_iter=self.curvature.max_iter, v0=self._start_vectors(previous, op),
                          seed=self._seed(step, 5), **self.curvature.eigen_options())
        return {"eigenvalue": float(top.eigenvalues[0]), "residual": float(top.residuals[0]),
                "converged": bool(top.converged), "examples": objective.num_examples, "hvps": int(top.hvps),
                "seconds": float(top.seconds)}

    def update_due(self, step: int) -> bool:
        """Whether step ``t`` gets an update-curvature reading (``update_curvature`` set, ``t % update_every == 0``)."""
        return self.update_curvature is not None and step % self.update_every == 0

    def before_step(self, step: int, model: nn.Module) -> None:
        """Call right before the optimizer step ``θ_t → θ_{t+1}`` (after any checkpoint of ``t``): keeps a
        copy of ``θ_t`` when :meth:`update_due` ``(step)``, for :meth:`after_step` to form ``u``. Cheap otherwise."""
        self._before = None
        if self.update_due(step):
            objective, op = self._objects(model)
            local = isinstance(op, ShardedHessianOperator)  # a sharded model: this rank's slices
            self._before = {"step": int(step), "params": {n: (_local(p) if local else p).detach().clone()
                                                          for n, p in objective.params.items()}}

    def _update_reading(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> None:
        """The ``"update_curvature"`` record of step ``step`` (to ``sink`` and :attr:`last_update`), when
        :meth:`before_step` captured ``θ_step``."""
        before, self._before = self._before, None
        if before is None or before["step"] != int(step) or self.update_curvature is None:
            return
        objective, op = self._objects(model)
        shapes = {n: (_local(p) if isinstance(op, ShardedHessianOperator) else p).shape
                  for n, p in objective.params.items()}
        if set(before["params"]) != set(objective.params) or any(
                before["params"][n].shape != shape for n, shape in shapes.items()):
            raise ConfigError("after_step got a model whose parameters differ from those before_step captured; pass "
                              "the same model to both", argument="model")
        errors: dict[str, str] = {}
        diag_p = None
        try:
            if not isinstance(op, ShardedHessianOperator):  # a sharded optimizer's state is sharded too
                adam_optimizer(optimizer)
                diag_p = adam_preconditioner(optimizer, objective)  # type: ignore[arg-type]
        except ConfigError:
            pass  # not Adam (or no state): no preconditioned quotient
        rec: dict[str, Any] = {"kind": "update_curvature", "step": int(step)}
        try:
            if isinstance(op, ShardedHessianOperator):
                flat = torch.cat([before["params"][n].reshape(-1) for n in objective.names])
                reading = curvature_along_sharded(self.update_curvature, op, flat)
            else:
                uop = self._update_operator(objective, op) if self.update_curvature == "hvp" else None
                reading = curvature_along(self.update_curvature, objective, before["params"], op=uop, diag_p=diag_p)
            rec.update(reading.to_json())
        except SharpscopeError as e:
            rec.update(method=self.update_curvature, kappa=None, kappa_preconditioned=None,
                       cost={"hvps": 0, "forwards": 0, "seconds": 0.0})
            errors["kappa"] = str(e)
        if self.threshold is not None:
            try:
                rec["thresholds"] = dict(self.threshold(int(step), optimizer, None))
            except SharpscopeError as e:
                rec["thresholds"] = {}
                errors["thresholds"] = str(e)
        rec["settings"] = {"update_every": self.update_every, "probe_examples": objective.num_examples,
                           "dtype": str(objective.dtype).removeprefix("torch."),
                           "hvp_mode": "finite difference (sharded)" if isinstance(op, ShardedHessianOperator)
                           and self.update_curvature == "hvp" else self._update_op.mode
                           if self.update_curvature == "hvp" and self._update_op else None,
                           "preconditioner": "adam" if diag_p is not None else None}
        if errors:
            rec["errors"] = errors
        self.last_update = rec
        self._emit(rec)

    def _update_operator(self, objective: Objective, op: HessianOperator) -> HessianOperator:
        """The Hessian for the update curvature: this tracker's product settings without a graph cache
        (the graph at ``θ_t`` serves one product), in the product modes the measurements chose."""
        if self._update_op is None:
            self._update_op = self.curvature.replace(cache_graphs=False).hessian(objective)
        if self.curvature.hvp_mode == "auto":
            self._update_op.modes.update(op.modes or self._saved_modes)
        return self._update_op

    def after_step(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                   batch_sharpness: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
        """Call right after the optimizer step ``θ_t → θ_{t+1}`` of every step ``t`` (cheap when nothing
        is pending). If ``t`` was measured with ``alignment=True``, return the ``"alignment"`` record of
        ``Δ = θ_{t+1} − θ_t`` with that measurement's eigenvectors (also passed to ``sink``); else None.
        If ``t`` was measured and ``optimizer`` is SAM, first record (``sink``) the ``"sam_batch"`` record
        of the gradient norm its step normalised (:func:`~sharpscope.track.thresholds.batch_sam_edge`),
        with ``batch_sharpness`` (from :meth:`batch_sharpness`) when given.
        A pending measurement not completed at its own step is dropped. With ``update_curvature``, and
        :meth:`before_step` called before this step, first record the ``"update_curvature"`` reading of
        ``u = θ_{t+1} − θ_t`` (kept in :attr:`last_update`).
        """
        self._update_reading(step, model, optimizer)
        sam_step, self._sam_step = self._sam_step, None
        if sam_step == int(step) and optimizer is not None:
            batch = batch_sam_edge(step, optimizer, batch_sharpness)
            if batch is not None:
                self._emit(batch)
        pending, self._pending = self._pending, None
        if pending is None or pending["step"] != int(step) or self._eigenvectors is None:
            return None
        theta = self._objects(model)[0].parameter_vector()
        if theta.shape != pending["theta"].shape:
            return None
        delta = theta - pending["theta"].to(theta.device, theta.dtype)
        vectors = self._eigenvectors.to(theta.device, theta.dtype) * pending["signs"].to(theta.device, theta.dtype)
        found = subspace_alignment(delta, vectors)
        rec = {"kind": "alignment", "step": int(step), "update_norm": float(delta.norm()),
               "update_cos": None if found is None else found[0],
               "update_fraction": None if found is None else found[1]}
        self._emit(rec)
        return rec

    def settings(self, objective: Objective, op: HessianOperator | ShardedHessianOperator) -> dict[str, Any]:
        """How the numbers are obtained (stored with every record)."""
        c = self.curvature
        sharded = isinstance(op, ShardedHessianOperator)
        product = {"hvp_mode": "finite difference (sharded)", "cache_graphs": False,
                   "shard": {key: value for key, value in op.describe().items()
                             if key in ("world_size", "step", "step_rule", "gradient_divide_factor")}} if sharded else {
            "hvp_mode": op.mode, "cache_graphs": c.cache_graphs}  # type: ignore[union-attr]
        return {"probe_examples": objective.num_examples, "num_batches": len(objective.batches),
                "world_size": world_size(), "bn": c.bn,
                "dim": objective.dim, "dtype": str(objective.dtype).removeprefix("torch."),
                "device": str(objective.device), **product,
                "k": c.k, "tol": c.tol, "stop": c.stop,
                "max_iter": c.max_iter, "trace": c.trace_method if self.trace else None,
                "trace_matvecs": c.trace_matvecs if self.trace else None,
                "test_examples": None if self._test is None else self._test.num_examples, "seed": self.seed,
                "probes": self.probes,
                "preconditioned": "adam" if self.preconditioned else None,
                "update_curvature": self.update_curvature,
                "update_every": self.update_every if self.update_curvature else None,
                "sharpness": list(self.sharpness) or None,
                "sharpness_settings": asdict(self.sharpness_settings) if self.sharpness else None}

    # ------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to continue identically: the warm-start vectors (also the preconditioned
        ones), the HVP modes and a pending alignment (``θ_t`` and signs, between a measurement and
        :meth:`after_step`), and ``θ_t`` captured by :meth:`before_step` for the update curvature (None
        except between :meth:`before_step` and :meth:`after_step`; the runner checkpoints before capturing)."""
        modes = dict(self._op.modes) if isinstance(self._op, HessianOperator) else dict(self._saved_modes)
        vecs = None if self._eigenvectors is None else self._eigenvectors.detach().cpu().clone()
        pending = None if self._pending is None else {
            "step": self._pending["step"], "theta": self._pending["theta"].cpu().clone(),
            "signs": self._pending["signs"].cpu().clone()}
        pre = None if self._pre_eigenvectors is None else self._pre_eigenvectors.detach().cpu().clone()
        before = None if self._before is None else {
            "step": self._before["step"], "params": {n: t.cpu().clone() for n, t in self._before["params"].items()}}
        return {"eigenvectors": vecs, "hvp_modes": modes, "alignment": pending, "preconditioned_eigenvectors": pre,
                "sam_step": self._sam_step, "update_before": before}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Inverse of :meth:`state_dict` (vectors are moved to the model's device at the next measurement)."""
        vecs, pre = state.get("eigenvectors"), state.get("preconditioned_eigenvectors")
        for name, value in (("eigenvectors", vecs), ("preconditioned_eigenvectors", pre)):
            if value is not None and not isinstance(value, Tensor):
                raise ConfigError(f"tracker state: {name} must be a tensor or None")
        self._eigenvectors, self._pre_eigenvectors = vecs, pre
        pending = state.get("alignment")
        if pending is not None and not (isinstance(pending, Mapping) and isinstance(pending.get("step"), int)
                                        and all(isinstance(pending.get(key), Tensor) for key in ("theta", "signs"))):
            raise ConfigError("tracker state: alignment must be None or {'step': int, 'theta': tensor, 'signs': tensor}")
        self._pending = None if pending is None else dict(pending)
        before = state.get("update_before")
        if before is not None and not (isinstance(before, Mapping) and isinstance(before.get("step"), int)
                                       and isinstance(before.get("params"), Mapping)
                                       and all(isinstance(t, Tensor) for t in before["params"].values())):
            raise ConfigError("tracker state: update_before must be None or {'step': int, 'params': {name: tensor}}")
        self._before = None if before is None else {"step": before["step"], "params": dict(before["params"])}
        sam_step = state.get("sam_step")
        self._sam_step = sam_step if isinstance(sam_step, int) else None
        self._saved_modes = dict(state.get("hvp_modes") or {})
        if isinstance(self._op, HessianOperator) and self.curvature.hvp_mode == "auto":
            self._op.modes.update(self._saved_modes)
