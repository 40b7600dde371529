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

Each part is a quantity of :mod:`sharpscope.track.quantities` (a small object that writes its fields
and returns its cost); :meth:`SharpnessTracker.quantities` lists those the switches select, in record
order, and a new quantity is one more object in that list. Whole and sharded models are measured through
one interface (:mod:`sharpscope.track.probe_view`).

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
    >>> [r.step for r in records], len(records[0].eigenvalues), records[0].edge is not None
    ([0, 5, 10], 2, True)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from typing import Any

import torch
from torch import Tensor, nn

from sharpscope.curvature import HessianOperator, Objective
from sharpscope.curvature.fits import check_model_fits
from sharpscope.curvature.operators.distributed import world_size
from sharpscope.curvature.operators.objective import LossFn
from sharpscope.curvature.operators.sharded import is_sharded
from sharpscope.curvature.settings import DEFAULTS, CurvatureSettings
from sharpscope.data import ArrayDataset
from sharpscope.errors import ConfigError, SharpscopeError
from sharpscope.io.records import Alignment, Measurement, RunRecord, UpdateReading
from sharpscope.measures import SharpnessSettings, check_measure_names
from sharpscope.measures.settings import DEFAULTS as SHARPNESS_DEFAULTS
from sharpscope.track import quantities as qty
from sharpscope.track.probe_view import OperatorView, ProbeView, examples_view, view_of
from sharpscope.track.quantities import ThresholdFn, step_seed, subspace_alignment, thresholds_of
from sharpscope.track.thresholds import batch_sam_edge, default_thresholds
from sharpscope.track.update_curvature import resolve_method
from sharpscope.validation import check_bool, check_choice, check_int, check_seed, check_type

__all__ = ["SharpnessTracker", "ThresholdFn", "evaluate", "step_seed", "subspace_alignment"]


def _pair(data: Any) -> Any:
    return (data.x, data.y) if isinstance(data, ArrayDataset) else data


def evaluate(objective: Objective) -> tuple[float, float | None]:
    """Mean loss and accuracy of the objective's model over its batches, in its mode
    (:meth:`Objective.evaluate <sharpscope.curvature.Objective.evaluate>` at the current parameters):
    ``(Σ_b n_b ℓ_b / N, Σ_b n_b acc_b / N)``, summed over ranks under a process group; accuracy is None
    when outputs are not class scores. Non-finite losses are returned as they are, not raised."""
    return ProbeView(objective).evaluate()


#: How the random vectors of a measurement are seeded: ``(seed, step)``, or ``seed`` alone (those of step 0).
PROBES = ("per-step", "fixed")


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
            BatchNorm mode, product mode...). By default (``cache_graphs="auto"``) a measurement keeps every
            batch's gradient graph between its products when they fit in half the free memory (same values,
            fewer passes); the graphs are freed after each measurement, and each record's
            ``settings["cache_graphs"]`` says whether they were kept. ``hvp_mode="auto"`` picks the faster
            exact mode by timing (once per tracker, kept in :meth:`state_dict`); a fixed mode makes records
            reproducible to the last bit.
        trace: also estimate ``tr(H)`` with ``curvature.trace_method`` and ``curvature.trace_matvecs`` products.
        batch_size: physical batch size of the probe (memory only: the objective is the same).
        test_data: optional fixed test set for test loss and accuracy.
        threshold: ``(step, optimizer, grad_norm) -> dict`` stored as ``thresholds``.
        grad_norm: measure ``‖∇L‖`` (one gradient over the probe set).
        warm_start: start Lanczos from the previous eigenvectors.
        seed: seed of the random start vectors and trace probes (combined with the step).
        probes: ``"per-step"`` draws them afresh at each step (from ``(seed, step)``); ``"fixed"`` draws the
            same ones at every step (from ``seed`` alone, the vectors ``"per-step"`` draws at step 0).
        sink: called with every record, a typed record of :mod:`sharpscope.io.records` (``record.to_json()`` is
            its stored form): ``RunDirectory.append_metric``, any sink of :mod:`sharpscope.track.sinks` (JSONL,
            CSV, TensorBoard, W&B; several with ``MultiSink``), or a callable of your own.
        alignment: at each measurement also record ``grad_cos`` (``cos(g, v_i)`` for the top-``k``
            eigenvectors, each signed so that ``gᵀv_i ≥ 0``, since eigenvectors have no sign) and
            ``grad_fraction`` = ``‖P_k g‖/‖g‖``, with ``g = ∇L`` on the probe set; and, once
            :meth:`after_step` sees the update ``Δ = θ_{t+1} − θ_t`` that the optimizer took right
            after the measurement at ``t``, an :class:`~sharpscope.io.records.Alignment` record of step ``t`` with
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
            records an :class:`~sharpscope.io.records.UpdateReading` of step ``t`` (``method``, ``kappa``,
            ``kappa_preconditioned``, ``uHu``, ``uPu``, ``update_norm``, ``cost`` ``{"hvps", "forwards",
            "seconds"}``, ``thresholds``, ...)
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
                 sink: Callable[[RunRecord], Any] | None = None, alignment: bool = False,
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
        check_type("curvature", curvature, CurvatureSettings, "a CurvatureSettings")
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
        self.alignment, self.preconditioned, self.test_predictions = alignment, preconditioned, test_predictions
        self.update_curvature, self.update_every = method, update_every
        self._key: tuple[int, ...] | None = None
        self._probe: OperatorView | None = None
        self._test: ProbeView | None = None
        self._saved_modes: dict[str, str] = {}
        self.last: Measurement | None = None
        self._solver = qty.EigenSolver(curvature, qty.Seeds(seed, fixed=self.probes == "fixed"), warm_start)
        self._top = qty.TopEigenvalues(self._solver)  # keeps the warm-start eigenvectors
        self._pre = qty.PreconditionedEigenvalues(self._solver)  # keeps its own
        self._align = qty.GradientAlignment(self._top)  # θ_t and eigenvector signs until after_step(t)
        self._sam = qty.SamStep()  # a measured step whose SAM batch norm after_step records
        self._before: dict[str, Any] | None = None  # {"step": t, "params": θ_t} from before_step until after_step(t)
        self._update_op: HessianOperator | None = None  # uncached products for the update curvature
        self.last_update: UpdateReading | None = None

    def quantities(self) -> list[qty.Quantity]:
        """What a measurement records, in the record's order, as the switches select
        (:mod:`sharpscope.track.quantities`)."""
        chosen: list[qty.Quantity] = [qty.LossAccuracy(self.test_predictions), self._top]
        if self.preconditioned:
            chosen.append(self._pre)
        if self.trace:
            chosen.append(qty.Trace(self.curvature, self._solver.seeds))
        if self.sharpness:
            chosen.append(qty.SharpnessMeasures(self.sharpness, self.sharpness_settings, self._solver.seeds))
        if self.grad_norm or self.alignment:
            chosen.append(qty.GradientNorm())
        if self.alignment:
            chosen.append(self._align)
        chosen.append(self._sam)
        if self.threshold is not None:
            chosen.append(qty.Thresholds(self.threshold))
        return chosen

    # ------------------------------------------------------------------------------ set-up
    def due(self, step: int) -> bool:
        """Whether ``step`` is a measurement step (``step % every == 0``)."""
        return step % self.every == 0

    def _view(self, model: nn.Module) -> OperatorView:
        """The probe set's view for ``model`` (whole or sharded), rebuilt when the model or its parameters change."""
        check_type("model", model, nn.Module, "a torch.nn.Module")
        key = (id(model), *(id(p) for p in model.parameters()))
        if self._key != key or self._probe is None:
            sharded = is_sharded(model)
            if sharded and (self.alignment or self.preconditioned):
                used = [name for name, on in (("alignment=True", self.alignment),
                                              ("preconditioned=True", self.preconditioned)) if on]
                raise ConfigError(f"{' and '.join(used)} need whole vectors and do not apply to a model sharded "
                                  "with fully_shard", argument="model")
            for name, data in (("probe_data", self.probe_data), ("test_data", self.test_data)):
                if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
                    check_model_fits(model, self.loss_fn, data[0], data[1], name=name)  # one line, not a deep error
            objective = Objective(model, self.loss_fn, self.probe_data, bn=self.curvature.bn,
                                  batch_size=self.batch_size, validate=False,
                                  weight_precision="native" if sharded else self.curvature.weight_precision)
            self._probe = view_of(objective, sharded, self._operator)
            self._test = None if self.test_data is None else examples_view(Objective(
                model, self.loss_fn, self.test_data, bn=self.curvature.bn, batch_size=self.batch_size,
                validate=False), sharded)
            self._update_op = None
            if self.curvature.hvp_mode == "auto" and self._saved_modes:
                self._probe.modes.update(self._saved_modes)
            self._key = key
        return self._probe

    def _operator(self, objective: Objective) -> HessianOperator:
        """The Hessian of ``objective`` with this tracker's product settings."""
        return self.curvature.hessian(objective)

    # ------------------------------------------------------------------------- measuring
    def maybe_measure(self, step: int, model: nn.Module,
                      optimizer: torch.optim.Optimizer | None = None) -> Measurement | None:
        """:meth:`measure` if :meth:`due` ``(step)``, else None."""
        return self.measure(step, model, optimizer) if self.due(step) else None

    def measure(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> Measurement:
        """Measure now and return the :class:`~sharpscope.io.records.Measurement` (also passed to ``sink``): each
        of :meth:`quantities` in turn,
        then ``cost`` (``hvps`` their products, ``seconds`` the whole measurement), ``settings`` and ``errors``.
        See the module docstring."""
        start = time.perf_counter()
        chosen = self.quantities()
        for quantity in chosen:
            quantity.check(optimizer)
        probe = self._view(model)
        reading = qty.Reading(int(step), optimizer, probe, self._test, {"step": int(step)})
        hvps = 0
        for quantity in chosen:
            t = time.perf_counter()
            hvps += quantity.measure(reading)
            if quantity.timer is not None:
                reading.cost[quantity.timer] = time.perf_counter() - t
        reading.cost.update(hvps=hvps, seconds=time.perf_counter() - start)
        fields = reading.fields
        fields["cost"] = reading.cost
        fields["settings"] = self.settings(probe)
        if reading.errors:
            fields["errors"] = reading.errors
        rec = Measurement.made(fields)
        probe.release()  # training needs the memory of cached graphs until the next measurement
        self.last = rec
        self._emit(rec)
        return rec

    def _emit(self, rec: RunRecord) -> None:
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
                              f"{type(e).__name__} on the {rec.KIND} record of step "
                              f"{rec.step}: {str(e).splitlines()[0] if str(e) else ''}",
                              argument="sink") from e

    def expect_batch_record(self, step: int, optimizer: torch.optim.Optimizer | None) -> None:
        """Have :meth:`after_step` ``(step)`` record SAM's batch gradient norm, as after a measurement
        at ``step`` (for a resumed run whose measurement at ``step`` was stored before a crash)."""
        self._sam.mark(int(step), optimizer)

    def wants_batch_record(self, step: int) -> bool:
        """Whether :meth:`after_step` ``(step)`` will record SAM's mini-batch gradient norm."""
        return self._sam.step == int(step)

    def batch_sharpness(self, step: int, model: nn.Module, batch: tuple[Tensor, Tensor]) -> dict[str, Any]:
        """λ_max of the loss on one mini-batch ``batch`` at the model's current weights (Lanczos, k = 1,
        this tracker's ``tol``, ``hvp_mode`` and BatchNorm mode; warm-started from the last measured top
        eigenvector): ``{"eigenvalue", "residual", "converged", "examples", "hvps", "seconds"}``."""
        objective = Objective(model, self.loss_fn, batch, bn=self.curvature.bn, batch_size=self.batch_size,
                              validate=False, weight_precision=self.curvature.weight_precision)
        op = self._operator(objective)
        previous = None if self._top.vectors is None else self._top.vectors[:, :1]
        top = self._solver.top(op, self._solver.start(previous, op), step, salt=5, k=1)
        return {"eigenvalue": float(top.eigenvalues[0]), "residual": float(top.residuals[0]),
                "converged": bool(top.converged), "examples": objective.num_examples, "hvps": int(top.hvps),
                "seconds": float(top.seconds)}

    def update_due(self, step: int) -> bool:
        """Whether step ``t`` gets an update-curvature reading (``update_curvature`` set, ``t % update_every == 0``)."""
        return self.update_curvature is not None and step % self.update_every == 0

    def before_step(self, step: int, model: nn.Module) -> None:
        """Call right before the optimizer step ``θ_t → θ_{t+1}`` (after any checkpoint of ``t``): keeps a
        copy of ``θ_t`` (this rank's slices of a sharded model) when :meth:`update_due` ``(step)``, for
        :meth:`after_step` to form ``u``. Cheap otherwise."""
        self._before = None
        if self.update_due(step):
            params = self._view(model).local_params()
            self._before = {"step": int(step), "params": {n: p.detach().clone() for n, p in params.items()}}

    def _update_reading(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> None:
        """The :class:`~sharpscope.io.records.UpdateReading` of step ``step`` (to ``sink`` and :attr:`last_update`), when
        :meth:`before_step` captured ``θ_step``."""
        before, self._before = self._before, None
        if before is None or before["step"] != int(step) or self.update_curvature is None:
            return
        probe = self._view(model)
        shapes = {n: p.shape for n, p in probe.local_params().items()}
        if set(before["params"]) != set(shapes) or any(before["params"][n].shape != s for n, s in shapes.items()):
            raise ConfigError("after_step got a model whose parameters differ from those before_step captured; pass "
                              "the same model to both", argument="model")
        errors: dict[str, str] = {}
        how: dict[str, Any] = {"hvp_mode": None, "preconditioner": None}
        rec: dict[str, Any] = {"step": int(step)}
        try:
            rec.update(probe.update_curvature(self.update_curvature, before["params"], optimizer,
                                              lambda: self._update_operator(probe), how).to_json())
        except SharpscopeError as e:
            rec.update(method=self.update_curvature, kappa=None, kappa_preconditioned=None,
                       cost={"hvps": 0, "forwards": 0, "seconds": 0.0})
            errors["kappa"] = str(e)
        if self.threshold is not None:
            rec["thresholds"] = thresholds_of(self.threshold, step, optimizer, None, errors)
        rec["settings"] = {"update_every": self.update_every, "probe_examples": probe.objective.num_examples,
                           "dtype": str(probe.objective.dtype).removeprefix("torch."), **how}
        if errors:
            rec["errors"] = errors
        self.last_update = UpdateReading.made(rec)
        self._emit(self.last_update)

    def _update_operator(self, probe: OperatorView) -> HessianOperator:
        """The Hessian for the update curvature: this tracker's product settings without a graph cache
        (the graph at ``θ_t`` serves one product), in the product modes the measurements chose."""
        if self._update_op is None:
            self._update_op = self.curvature.replace(cache_graphs=False).hessian(probe.objective)
        if self.curvature.hvp_mode == "auto":
            self._update_op.modes.update(probe.modes or self._saved_modes)
        return self._update_op

    def after_step(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                   batch_sharpness: Mapping[str, Any] | None = None) -> Alignment | None:
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
        sam_step, self._sam.step = self._sam.step, None
        if sam_step == int(step) and optimizer is not None:
            batch = batch_sam_edge(step, optimizer, batch_sharpness)
            if batch is not None:
                self._emit(batch)
        rec = self._align.update_record(step, lambda: self._view(model).objective.parameter_vector())
        if rec is not None:
            self._emit(rec)
        return rec

    def settings(self, probe: OperatorView) -> dict[str, Any]:
        """How the numbers are obtained (stored with every record)."""
        c, objective = self.curvature, probe.objective
        return {"probe_examples": objective.num_examples, "num_batches": len(objective.batches),
                "world_size": world_size(), "bn": c.bn,
                "dim": objective.dim, "dtype": str(objective.dtype).removeprefix("torch."),
                "device": str(objective.device), **probe.product_settings(),
                "k": c.k, "tol": c.tol, "stop": c.stop,
                "max_iter": c.max_iter, "trace": c.trace_method if self.trace else None,
                "trace_matvecs": c.trace_matvecs if self.trace else None,
                "test_examples": None if self._test is None else self._test.objective.num_examples, "seed": self.seed,
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
        modes = dict((self._probe.modes if self._probe is not None else None) or self._saved_modes)
        pending = self._align.pending
        before = None if self._before is None else {
            "step": self._before["step"], "params": {n: t.cpu().clone() for n, t in self._before["params"].items()}}
        return {"eigenvectors": _cpu_copy(self._top.vectors), "hvp_modes": modes,
                "alignment": None if pending is None else {"step": pending["step"], "theta": pending["theta"].cpu().clone(),
                                                           "signs": pending["signs"].cpu().clone()},
                "preconditioned_eigenvectors": _cpu_copy(self._pre.vectors), "sam_step": self._sam.step,
                "update_before": before}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Inverse of :meth:`state_dict` (vectors are moved to the model's device at the next measurement)."""
        vecs, pre = state.get("eigenvectors"), state.get("preconditioned_eigenvectors")
        for name, value in (("eigenvectors", vecs), ("preconditioned_eigenvectors", pre)):
            if value is not None and not isinstance(value, Tensor):
                raise ConfigError(f"tracker state: {name} must be a tensor or None")
        self._top.vectors, self._pre.vectors = vecs, pre
        pending = state.get("alignment")
        if pending is not None and not (isinstance(pending, Mapping) and isinstance(pending.get("step"), int)
                                        and all(isinstance(pending.get(key), Tensor) for key in ("theta", "signs"))):
            raise ConfigError("tracker state: alignment must be None or {'step': int, 'theta': tensor, 'signs': tensor}")
        self._align.pending = None if pending is None else dict(pending)
        before = state.get("update_before")
        if before is not None and not (isinstance(before, Mapping) and isinstance(before.get("step"), int)
                                       and isinstance(before.get("params"), Mapping)
                                       and all(isinstance(t, Tensor) for t in before["params"].values())):
            raise ConfigError("tracker state: update_before must be None or {'step': int, 'params': {name: tensor}}")
        self._before = None if before is None else {"step": before["step"], "params": dict(before["params"])}
        sam_step = state.get("sam_step")
        self._sam.step = sam_step if isinstance(sam_step, int) else None
        self._saved_modes = dict(state.get("hvp_modes") or {})
        if self._probe is not None and self.curvature.hvp_mode == "auto":
            self._probe.modes.update(self._saved_modes)


def _cpu_copy(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.detach().cpu().clone()
