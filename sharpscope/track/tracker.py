"""A sharpness tracker: a callback for any training loop that measures curvature every k steps.

At a measured step ``t`` with parameters ``θ_t`` the tracker evaluates, on a *fixed* probe set
(the objective ``L(θ) = (1/N) Σ_b n_b ℓ_b(θ)`` of :class:`~sharpscope.curvature.Objective`):

* the top ``k`` eigenvalues of ``H = ∇²L(θ_t)`` by Lanczos (``which="LA"``), warm-started from
  the previous measurement's eigenvectors (``v0 = Σ_i y_i``), with their Ritz residuals
  ``‖H y − θ y‖/|θ|`` and the number of Hessian-vector products (check H3);
* optionally ``tr(H)`` by Hutch++ or Hutchinson, with its standard error, and ``tr(H)/d``;
* ``‖∇L(θ_t)‖`` at the unperturbed point (check H5; the ``‖g‖`` of the SAM-edge);
* the threshold matching the optimizer (:func:`~sharpscope.track.thresholds.default_thresholds`
  or any callable ``(step, optimizer, grad_norm) -> dict``);
* loss and accuracy on the probe (training) set and on an optional fixed test set;
* the cost of each part (HVPs, seconds) and the settings (probe size, BN mode, HVP mode, dtype).

Nothing is mutated: parameters, gradients (``.grad``), train/eval flags, BatchNorm buffers and
every random number generator are as before the call, so measuring never changes training.
Random start vectors and probes come from generators seeded with ``(seed, step)``; the same step
gives the same record whatever happened before (except for the warm start, whose vectors are
part of :meth:`SharpnessTracker.state_dict`).

Example, in a hand-written loop::

    tracker = SharpnessTracker((x, y), mse, every=50, k=2, sink=run.append_metric)
    for step in range(steps + 1):
        tracker.maybe_measure(step, model, opt)
        ...  # one optimizer step
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch
from torch import Tensor, nn

from sharpscope.curvature import ConvergenceWarning, HessianOperator, Objective, lanczos, trace_estimator
from sharpscope.curvature.objective import BNMode, LossFn
from sharpscope.data import ArrayDataset
from sharpscope.errors import ConfigError, SharpscopeError
from sharpscope.losses import accuracy
from sharpscope.track.thresholds import default_thresholds

ThresholdFn = Callable[[int, "torch.optim.Optimizer | None", "float | None"], Mapping[str, Any]]
TraceMethod = Literal["hutch++", "hutchinson"]


def _pair(data: Any) -> Any:
    return (data.x, data.y) if isinstance(data, ArrayDataset) else data


def evaluate(objective: Objective) -> tuple[float, float | None]:
    """Mean loss and accuracy of ``objective.model`` over the objective's batches, in its mode.

    ``(Σ_b n_b ℓ_b / N, Σ_b n_b acc_b / N)``; accuracy is None when outputs are not class scores
    (fewer than two columns). Non-finite losses are returned as they are, not raised.
    """
    loss, acc = 0.0, 0.0
    scores = True
    with torch.no_grad(), objective.mode():
        for batch, w in zip(objective.batches, objective.weights()):
            out = objective.model(batch.x)
            loss += w * float(objective._checked_loss(out, batch.y))
            scores = scores and out.ndim == 2 and out.shape[1] > 1
            if scores:
                acc += w * accuracy(out, batch.y)
    return loss, (acc if scores else None)


def step_seed(seed: int, step: int, salt: int) -> int:
    """A seed for the random vectors of measurement ``step`` (independent of what came before)."""
    return (int(seed) * 1_000_003 + int(step) * 16 + salt) % (2**62)


class SharpnessTracker:
    """Measure the Hessian spectrum and friends every ``every`` steps (see the module docstring).

    Args:
        probe_data: the fixed probe set: an ``(x, y)`` pair, an :class:`ArrayDataset`, or an
            iterable of ``(x, y)`` batches. It must define the objective the optimizer descends
            (same loss, same examples for full-batch training) or thresholds are off (check H1).
        loss_fn: ``(outputs, targets) -> mean loss over the batch`` (e.g. :func:`sharpscope.losses.mse`).
        every: measure when ``step % every == 0``.
        k: number of top eigenvalues. tol, max_iter: Lanczos stopping (relative Ritz residual).
        trace: also estimate ``tr(H)`` with ``trace_method`` and ``trace_matvecs`` products.
        bn: BatchNorm mode of the objective (``"eval"`` or ``"batch"``; check H2).
        batch_size: physical batch size of the probe (memory only: the objective is the same).
        hvp_mode: ``"auto"`` picks the faster exact mode by timing (once per tracker, kept in
            :meth:`state_dict`); a fixed mode makes records reproducible to the last bit.
        cache_graphs: keep the probe batches' gradient graphs between products (``rev-rev``
            only; same values, fewer passes; costs their activation memory between measurements).
        test_data: optional fixed test set for test loss and accuracy.
        threshold: ``(step, optimizer, grad_norm) -> dict`` stored as ``thresholds``.
        grad_norm: measure ``‖∇L‖`` (one gradient over the probe set).
        warm_start: start Lanczos from the previous eigenvectors.
        seed: seed of the random start vectors and trace probes (combined with the step).
        sink: called with every record (e.g. ``RunDirectory.append_metric``).
    """

    def __init__(self, probe_data: Any, loss_fn: LossFn, *, every: int, k: int = 1, tol: float = 1e-3,
                 max_iter: int | None = None, trace: bool = False, trace_method: TraceMethod = "hutch++",
                 trace_matvecs: int = 99, bn: BNMode = "eval", batch_size: int | None = None,
                 hvp_mode: str = "auto", cache_graphs: bool = False, test_data: Any = None,
                 threshold: ThresholdFn | None = default_thresholds,
                 grad_norm: bool = True, warm_start: bool = True, seed: int = 0,
                 sink: Callable[[dict[str, Any]], Any] | None = None) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ConfigError(f"every must be a positive integer, got {every!r}")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"k must be a positive integer, got {k!r}")
        trace_estimator(trace_method)  # a clear error for an unknown name
        if trace and trace_matvecs < (6 if trace_method == "hutch++" else 2):
            raise ConfigError(f"trace_matvecs={trace_matvecs} is too small for {trace_method}")
        if hvp_mode not in ("auto", "fwd-rev", "rev-rev", "fd"):
            raise ConfigError(f"hvp_mode must be auto, fwd-rev, rev-rev or fd; got {hvp_mode!r}")
        if bn not in ("eval", "batch"):
            raise ConfigError(f"bn must be 'eval' or 'batch', got {bn!r}")
        self.probe_data, self.test_data = _pair(probe_data), _pair(test_data)
        self.loss_fn = loss_fn
        self.every, self.k, self.tol, self.max_iter = every, k, tol, max_iter
        self.trace, self.trace_method, self.trace_matvecs = trace, trace_method, trace_matvecs
        self.bn: BNMode = bn
        self.batch_size = batch_size
        self.hvp_mode = hvp_mode
        self.cache_graphs = bool(cache_graphs)
        self.threshold = threshold
        self.grad_norm, self.warm_start, self.seed, self.sink = grad_norm, warm_start, seed, sink
        self._key: tuple[int, ...] | None = None
        self._objective: Objective | None = None
        self._test: Objective | None = None
        self._op: HessianOperator | None = None
        self._eigenvectors: Tensor | None = None
        self._saved_modes: dict[str, str] = {}
        self.last: dict[str, Any] | None = None

    # ------------------------------------------------------------------------------ set-up
    def due(self, step: int) -> bool:
        """Whether ``step`` is a measurement step (``step % every == 0``)."""
        return step % self.every == 0

    def _objects(self, model: nn.Module) -> tuple[Objective, HessianOperator]:
        key = (id(model), *(id(p) for p in model.parameters()))
        if self._key != key or self._objective is None or self._op is None:
            self._objective = Objective(model, self.loss_fn, self.probe_data, bn=self.bn,
                                        batch_size=self.batch_size, validate=False)
            self._test = None if self.test_data is None else Objective(
                model, self.loss_fn, self.test_data, bn=self.bn, batch_size=self.batch_size, validate=False)
            self._op = HessianOperator(self._objective, mode=self.hvp_mode,  # type: ignore[arg-type]
                                       cache_graphs=self.cache_graphs)
            if self.hvp_mode == "auto" and self._saved_modes:
                self._op.modes.update(self._saved_modes)
            self._key = key
        return self._objective, self._op

    # ------------------------------------------------------------------------- measuring
    def maybe_measure(self, step: int, model: nn.Module,
                      optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any] | None:
        """:meth:`measure` if :meth:`due` ``(step)``, else None."""
        return self.measure(step, model, optimizer) if self.due(step) else None

    def measure(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any]:
        """Measure now and return the record (also passed to ``sink``). See the module docstring."""
        start = time.perf_counter()
        objective, op = self._objects(model)
        rec: dict[str, Any] = {"kind": "measurement", "step": int(step)}
        cost: dict[str, Any] = {}
        errors: dict[str, str] = {}

        t = time.perf_counter()
        rec["train_loss"], rec["train_acc"] = evaluate(objective)
        if self._test is not None:
            rec["test_loss"], rec["test_acc"] = evaluate(self._test)
        cost["eval_seconds"] = time.perf_counter() - t

        v0 = self._eigenvectors if self.warm_start else None
        if v0 is not None and v0.shape[0] != op.dim:
            v0 = None
        rec["warm_start"] = v0 is not None
        lanczos_hvps = 0
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                top = lanczos(op, self.k, which="LA", tol=self.tol, max_iter=self.max_iter, v0=v0,
                              seed=step_seed(self.seed, step, 1))
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

        trace_hvps = 0
        if self.trace:
            try:
                tr = trace_estimator(self.trace_method)(op, self.trace_matvecs, seed=step_seed(self.seed, step, 2))
                trace_hvps = tr.hvps
                rec["trace"] = {"estimate": tr.estimate, "stderr": tr.stderr, "per_param": tr.estimate / op.dim,
                                "method": self.trace_method, "hvps": tr.hvps, "seconds": tr.seconds}
            except SharpscopeError as e:
                rec["trace"] = None
                errors["trace"] = str(e)

        gnorm: float | None = None
        if self.grad_norm:
            t = time.perf_counter()
            gnorm = float(objective.gradient().norm())
            rec["grad_norm"] = gnorm
            cost["grad_seconds"] = time.perf_counter() - t

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
        self.last = rec
        if self.sink is not None:
            self.sink(rec)
        return rec

    def settings(self, objective: Objective, op: HessianOperator) -> dict[str, Any]:
        """How the numbers are obtained (stored with every record)."""
        return {"probe_examples": objective.num_examples, "num_batches": len(objective.batches), "bn": self.bn,
                "dim": objective.dim, "dtype": str(objective.dtype).removeprefix("torch."),
                "device": str(objective.device), "hvp_mode": op.mode, "cache_graphs": self.cache_graphs,
                "k": self.k, "tol": self.tol,
                "max_iter": self.max_iter, "trace": self.trace_method if self.trace else None,
                "trace_matvecs": self.trace_matvecs if self.trace else None,
                "test_examples": None if self._test is None else self._test.num_examples, "seed": self.seed}

    # ------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to continue identically: the warm-start vectors and the HVP modes."""
        modes = dict(self._op.modes) if self._op is not None else dict(self._saved_modes)
        vecs = None if self._eigenvectors is None else self._eigenvectors.detach().cpu().clone()
        return {"eigenvectors": vecs, "hvp_modes": modes}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Inverse of :meth:`state_dict` (vectors are moved to the model's device at the next measurement)."""
        vecs = state.get("eigenvectors")
        if vecs is not None and not isinstance(vecs, Tensor):
            raise ConfigError("tracker state: eigenvectors must be a tensor or None")
        self._eigenvectors = vecs
        self._saved_modes = dict(state.get("hvp_modes") or {})
        if self._op is not None and self.hvp_mode == "auto":
            self._op.modes.update(self._saved_modes)
