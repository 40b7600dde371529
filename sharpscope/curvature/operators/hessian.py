"""The Hessian of an :class:`Objective` as a matrix-free linear operator."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Literal, TypeVar, cast, get_args

import torch
from torch import Tensor

from sharpscope.curvature.memory import available_bytes
from sharpscope.curvature.operators import batches as structure
from sharpscope.curvature.operators import mode_cache
from sharpscope.curvature.operators.distributed import from_rank0, sum_across_ranks, sum_scalar_across_ranks
from sharpscope.curvature.operators.hvp import (
    HVP_MODES,
    GradientGraph,
    HVPFn,
    apply_graph,
    compiled_fwd_rev,
    fd_step,
    gradient_graph,
    hvp_fd,
    measured_gradient_graph,
)
from sharpscope.curvature.operators.linear_operator import LinearOperator
from sharpscope.curvature.operators.loaded import is_fused_attention_error
from sharpscope.curvature.operators.objective import LOW_PRECISION, Batch, Objective, finite_batch_loss
from sharpscope.curvature.operators.precision import (
    MeasuredPrecision,
    ProductPrecision,
    product_precision,
    relative_deviation,
    resolve_precision,
)
from sharpscope.curvature.sampling import Stopwatch
from sharpscope.errors import ConfigError, DataError, ObjectiveError
from sharpscope.validation import check_bool, check_choice, check_int, check_type

HVPMode = Literal["auto", "fwd-rev", "rev-rev", "fd"]

#: Relative finite-difference steps tried for low-precision weights, as multiples of :func:`fd_step`:
#: the best multiple differs between models (a 2-layer GPT-2 in bfloat16 is best near 1/8, an MLP near 1/2).
FD_STEP_FACTORS = (4.0, 2.0, 1.0, 0.5, 0.25, 0.125, 0.0625)
_T = TypeVar("_T")
#: Examples of the first batch that ``mode="auto"`` times the product modes on, on the CPU (see
#: :meth:`HessianOperator._trial_batch`).
TRIAL_EXAMPLES = 256

# Product modes chosen by timing, kept for the rest of the process: a second operator on the same
# architecture, device, precision and batch shapes (a second probe, a tracker rebuilt after a
# resume) reuses the choice instead of timing again. Keyed by :meth:`HessianOperator._timing_key`;
# a new process finds the choice in the on-disk cache (``mode_cache``).
_TIMED_CHOICES: dict[tuple[object, ...], dict[str, object]] = {}


class HessianOperator(MeasuredPrecision, LinearOperator):
    """``v -> H v`` with ``H = ∇²L(θ)`` the Hessian of the objective's mean loss over the probe set.

    ``H v = Σ_b (n_b / N) H_b v`` is accumulated batch by batch, so memory is bounded by one batch
    times one probe block; under ``torch.distributed`` the sum runs over every rank's batches, so
    all ranks get the same product and run the same algorithm from the same seed. Args:
        objective: the function whose Hessian is taken.
        mode: ``"fwd-rev"``, ``"rev-rev"``, ``"fd"`` (see :mod:`sharpscope.curvature.operators.hvp`), or
            ``"auto"``: time ``fwd-rev`` and ``rev-rev`` on the first batch (its first
            :data:`TRIAL_EXAMPLES` examples on the CPU) and keep the faster one
            that works, separately for single products (Lanczos) and for probe blocks (trace,
            density), since vmapping changes which is faster. The timing runs the first time each
            kind of call is made, or reused from an earlier operator of this process with the same
            architecture, loss, device, precision, BN mode and batch shapes, or from an earlier process
            on this machine through the on-disk cache (:mod:`~sharpscope.curvature.operators.mode_cache`;
            ``"remembered": True`` in the record, and ``"how"`` says which). With the graph cache in use the
            mode is ``rev-rev`` without timing (``"how": "decided from architecture"``). Finite differences are approximate and never chosen automatically. The
            modes used, and why, are in :meth:`describe`. Models as users load them
            (:mod:`sharpscope.curvature.operators.loaded`): activation-checkpointed layers take
            ``rev-rev`` under ``"auto"`` and refuse ``"fwd-rev"``; float16/bfloat16 weights computed
            natively (``Objective(weight_precision="native")``) take ``"fd"`` under ``"auto"`` (``rev-rev``
            with ``cache_graphs=True``), the step chosen
            and the deviation from exact products of a float32 copy measured at the first product
            (any mode on such weights is measured); the operator's vectors are then float32.
        block_size: probe vectors per vmapped pass; on out-of-memory the failing block is halved
            (and the smaller size kept) until a single product fails, which raises ObjectiveError.
        precision: the products' arithmetic (:mod:`sharpscope.curvature.operators.precision`): ``"strict"``
            (default) IEEE float32 (or the objective's float64); ``"tf32"`` TF32 matmuls and
            convolutions on CUDA; ``"bf16"`` bfloat16 autocast (float32 objectives only). The fast
            modes carry relative errors of about 1e-3 per product, so at the first product the
            operator multiplies one fixed random vector both strictly and in the chosen arithmetic
            and records ``‖Hv_fast − Hv_strict‖ / ‖Hv_strict‖`` (:meth:`precision_record`).
        compile: run forward-over-reverse products through ``torch.compile`` (see
            :func:`~sharpscope.curvature.operators.hvp.compiled_fwd_rev`); ``mode="auto"`` then means
            ``fwd-rev`` and the graph cache is off (both recorded), since ``torch.compile`` cannot
            compile double backward. The first product checks the compiled product against the
            eager one, as for ``precision``. Opt-in: each model, batch shape and block width is
            compiled once, at a cost of many products, and compiled products are not always faster
            than eager ones (compile times and speed ratios measured on the CPU benchmark:
            ``docs/speed-options.md``). CUDA graphs are not captured.
        cache_graphs: with ``rev-rev`` products, keep every batch's gradient graph between calls so
            each product is one double backward per batch (PyHessian's single-batch trick, for any
            number of batches). Costs the activation memory of all batches at once. The cache is
            rebuilt when any parameter or buffer of the model changes (tracked by tensor versions).
            ``"auto"`` (default): at the first product, build batch 0's graph, measure the tensors
            it keeps, scale by the probe set's size, and cache when that fits in half the device's
            free memory (``mode`` ``"auto"`` or ``"rev-rev"`` only); the estimate and the choice
            are recorded in :meth:`describe` under ``mode_selection["cache_graphs"]``. ``True`` /
            ``False`` force it. Products are the same numbers either way.
        cudnn_benchmark: let cuDNN time its convolution algorithms (on CUDA; restored afterwards).

    Example (float64, a linear least-squares model, where ``H = XᵀX / N`` exactly)::

        >>> X, y = torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 1, dtype=torch.float64)
        >>> model = torch.nn.Linear(3, 1, bias=False).double()
        >>> loss = lambda out, t: 0.5 * ((out - t) ** 2).sum(1).mean()
        >>> H = HessianOperator(Objective(model, loss, (X, y)))
        >>> v = torch.randn(3, dtype=torch.float64)
        >>> torch.allclose(H.matvec(v), X.T @ X @ v / 8)
        True
    """

    def __init__(self, objective: Objective, *, mode: HVPMode = "auto", block_size: int = 8,
                 cache_graphs: bool | Literal["auto"] = "auto", cudnn_benchmark: bool = True,
                 precision: ProductPrecision = "strict",
                 compile: bool = False) -> None:
        check_type("objective", objective, Objective, "an Objective (model, loss and probe data)")
        check_int("block_size", block_size, low=1)
        check_choice("mode", mode, get_args(HVPMode))
        check_choice("cache_graphs", cache_graphs, (True, False, "auto"))
        check_bool("compile", compile)
        self.precision: ProductPrecision = resolve_precision(precision, objective.dtype)
        if compile and (mode in ("rev-rev", "fd") or cache_graphs is True):
            raise ConfigError("compile=True compiles forward-over-reverse products (torch.compile does not "
                              f"support double backward); it cannot be combined with mode={mode!r}"
                              + (" or cache_graphs=True" if cache_graphs is True else ""))
        # low-precision weights computed natively: the algorithms' vectors stay float32
        super().__init__(objective.dim, torch.float32 if objective.dtype in LOW_PRECISION else objective.dtype,
                         objective.device)
        self.objective = objective
        self.block_size = block_size
        self.compile = compile
        self.requested = mode
        self.selection: dict[str, dict[str, object]] = {}
        self._init_precision_check()
        self.fd_h: float | None = None  # the relative finite-difference step when chosen by measurement
        self._fd_choice: dict[str, object] | None = None
        self._check_pending = self._check_pending or objective.dtype in LOW_PRECISION
        if compile:
            self.selection["compile"] = {"chosen": "fwd-rev", "reason": "torch.compile cannot compile double "
                                         "backward, so compiled products are forward over reverse"}
            mode = "fwd-rev"
            if cache_graphs == "auto":
                self.selection["cache_graphs"] = {"chosen": False, "reason": "compiled fwd-rev products"}
                cache_graphs = False
        if cache_graphs is True and mode == "auto":
            mode = "rev-rev"  # the cache exists for double backward only
        elif cache_graphs is True and mode != "rev-rev":
            raise ConfigError(f"cache_graphs needs mode='rev-rev' (or 'auto'), got {mode!r}")
        mode, cache_graphs = self._loaded_model_modes(objective, mode, cache_graphs)
        if cache_graphs == "auto" and mode in ("fwd-rev", "fd"):
            self.selection["cache_graphs"] = {"chosen": False, "reason": f"mode {mode!r} requested"}
            cache_graphs = False
        self._cache_pending = cache_graphs == "auto"
        self.cache_graphs = cache_graphs is True
        self.cudnn_benchmark = cudnn_benchmark
        self._graphs: list[GradientGraph] = []
        self._graph_key: tuple[tuple[int, int], ...] | None = None
        self.modes: dict[str, str] = {} if mode == "auto" else {"single": mode, "block": mode}
        if cache_graphs is True:
            self.selection["cache_graphs"] = {"chosen": "rev-rev", "reason": "graph cache requested"}

    def _loaded_model_modes(self, objective: Objective, mode: HVPMode,
                            cache_graphs: bool | Literal["auto"]) -> tuple[HVPMode, bool | Literal["auto"]]:
        """The product mode and graph cache for low-precision weights computed natively and for
        activation-checkpointed models (:mod:`sharpscope.curvature.operators.loaded`), recorded."""
        native = objective.dtype in LOW_PRECISION
        checkpointed = bool(objective.loaded.checkpointed)
        if checkpointed and mode == "fwd-rev":
            raise ConfigError("forward-over-reverse products (torch.func) cannot run through activation-checkpointed "
                              "layers; use mode 'rev-rev', 'fd' or 'auto'" + (" without compile" if self.compile else ""),
                              argument="mode")
        if checkpointed and cache_graphs is True:
            raise ConfigError("cache_graphs=True keeps every layer's activations, which activation checkpointing "
                              "exists to avoid; leave it 'auto' or False", argument="cache_graphs")
        why = (f"{str(objective.dtype).removeprefix('torch.')} weights computed natively" if native
               else "activation-checkpointed layers" if checkpointed else None)
        if why is None:
            return mode, cache_graphs
        if cache_graphs == "auto":
            self.selection["cache_graphs"] = {"chosen": False, "reason": why}
            cache_graphs = False
        if mode == "auto":
            mode = "fd" if native else "rev-rev"
            self.selection["mode"] = {"chosen": mode, "how": "decided from architecture", "reason": why + (
                ": central differences of two gradients, step from the weights' precision; their relative error "
                "against strict products of a float32 copy is measured at the first product" if native else
                ": torch.func transforms do not run through checkpointing, double backward does")}
        return mode, cache_graphs

    @property
    def graph_cache(self) -> bool | str:
        """Whether the gradient graphs are cached, or ``"auto (not yet chosen)"`` until the first product
        (or :meth:`settle_memory`) decides; why is in ``mode_selection["cache_graphs"]``."""
        return "auto (not yet chosen)" if self._cache_pending else self.cache_graphs

    @property
    def mode(self) -> str:
        """The product mode in use: one name, or ``single/block`` when auto chose differently."""
        if not self.modes:
            return "auto (not yet chosen)"
        chosen = set(self.modes.values())
        return chosen.pop() if len(chosen) == 1 else "/".join(f"{k}:{v}" for k, v in sorted(self.modes.items()))

    def _mode_for(self, m: int) -> str:
        regime = "single" if m == 1 else "block"
        if regime not in self.modes:
            self.modes[regime] = self._pick_mode(m)  # timed at the width in use: no wider trial block than the caller's
        return self.modes[regime]

    # ------------------------------------------------------------------------------ products
    def _params(self) -> dict[str, Tensor]:
        return self.objective.param_values()

    def _matmat(self, V: Tensor) -> Tensor:
        rows = V.T.contiguous()
        try:
            if self._cache_pending:
                self._attention_retry(self._decide_cache)
            self._attention_retry(self._check_products_once)
            out = self._attention_retry(lambda: self._products(rows, self.precision, compiled=self.compile,
                                                               cached=self.cache_graphs))
        except torch.OutOfMemoryError:
            raise
        except (RuntimeError, NotImplementedError) as err:  # the model cannot be differentiated this way
            others = "'auto'" if self.requested != "auto" else "hvp_mode 'fd'"
            raise ObjectiveError(f"{self.mode} Hessian-vector products fail on this model ({type(err).__name__}: "
                                 f"{(str(err).splitlines() or [''])[0][:240]}); try {others}") from err
        sum_across_ranks(out)
        if not torch.isfinite(out).all():
            raise ObjectiveError("a Hessian-vector product is not finite: the loss or its derivatives "
                                 "overflow at these parameters")
        return out.T

    def release_graphs(self) -> None:
        """Free the cached gradient graphs; the next product rebuilds them (a tracker calls this after each
        measurement, so that training does not hold them)."""
        self._graphs, self._graph_key = [], None

    def settle_memory(self) -> None:
        """Decide (and build) the graph cache before an algorithm sizes its memory budget."""
        if self._cache_pending:
            self._decide_cache()

    def loss_and_gradient(self) -> tuple[float, Tensor, str]:
        """``L(θ) = Σ_b (n_b/N) ℓ_b(θ)`` and ``∇L(θ)`` at the current parameters, and how they were taken.

        With the graph cache in use (decided here if pending) and strict products, the cached graphs
        already hold every batch's loss and gradient, computed by the same forward and backward passes,
        so no pass is repeated; otherwise :meth:`Objective.loss` and :meth:`Objective.gradient` run."""
        self.settle_memory()
        if not (self.cache_graphs and self.precision == "strict" and not self.objective.streamed):
            return self.objective.loss(), self.objective.gradient(), "separate forward and backward passes"
        params = self._params()
        with self._backend_settings(), self.objective.mode():
            self._attention_retry(lambda: self._refresh_graphs(params))
        total = 0.0
        gradient = torch.zeros(self.objective.dim, dtype=self.objective.dtype, device=self.device)
        for i, (graph, w) in enumerate(zip(self._graphs, self.objective.weights())):
            total += w * finite_batch_loss(float(graph.loss), i)
            gradient += w * graph.gradient(self.objective)
        return (sum_scalar_across_ranks(total, device=self.device), sum_across_ranks(gradient),
                "from the cached gradient graphs (no extra pass)")

    def _product_fn(self, m: int, compiled: bool) -> HVPFn:
        mode = self._mode_for(min(m, self.block_size))
        if mode == "fd" and self.fd_h is not None:
            return functools.partial(hvp_fd, h=self.fd_h)
        return compiled_fwd_rev() if compiled and mode == "fwd-rev" else HVP_MODES[mode]

    def _products(self, rows: Tensor, precision: ProductPrecision, *, compiled: bool, cached: bool) -> Tensor:
        """``w_b H_b`` applied to the rows, summed over this rank's batches, in blocks of ``block_size``."""
        out = torch.zeros_like(rows)
        fn = None if cached else self._product_fn(rows.shape[0], compiled)
        # exact modes differentiate in the objective's dtype; fd forms θ ± εv from the vectors as they are
        native = rows.dtype if self._mode_for(min(rows.shape[0], self.block_size)) == "fd" else self.objective.dtype
        params = self._params()
        with self._backend_settings(precision), self.objective.mode():
            if cached:
                self._refresh_graphs(params)
            for index, (batch, w) in enumerate(zip(self.objective.batches, self.objective.weights())):
                start = 0
                while start < rows.shape[0]:
                    stop = min(start + self.block_size, rows.shape[0])
                    block = rows[start:stop].to(native)
                    try:
                        out[start:stop] += w * (fn(self.objective, params, batch, block) if fn is not None else
                                                apply_graph(self.objective, self._graphs[index], block, keep=True))
                    except torch.OutOfMemoryError:
                        if stop - start == 1:
                            raise ObjectiveError(
                                f"out of GPU memory for one Hessian-vector product on a batch of {batch.size} "
                                "examples; split the probe set into smaller batches (batch_size=...)") from None
                        self.block_size = (stop - start) // 2  # halve the block that failed, and keep it so
                        torch.cuda.empty_cache()
                        continue
                    start = stop
        return out

    def _strict_and_configured(self, v: Tensor) -> tuple[Tensor, Tensor]:
        if self.objective.dtype in LOW_PRECISION:
            return self._native_check(v)
        reference = sum_across_ranks(self._products(v, "strict", compiled=False, cached=False))
        return reference, sum_across_ranks(self._products(v, self.precision, compiled=self.compile,
                                                          cached=self.cache_graphs))

    def _native_check(self, v: Tensor) -> tuple[Tensor, Tensor]:
        """Products of low-precision weights computed natively, against exact (``rev-rev``) products of a
        float32 copy of the objective. Finite differences first choose their relative step among
        :data:`FD_STEP_FACTORS` times :func:`fd_step` by the smallest deviation on a second Gaussian vector
        (seed 1), so the deviation reported on ``v`` is independent of the choice."""
        twin = HessianOperator(self.objective.strict_copy(), mode="rev-rev", cache_graphs=False)

        def reference(rows: Tensor) -> Tensor:
            return sum_across_ranks(twin._products(rows.float(), "strict", compiled=False, cached=False))

        def native(rows: Tensor) -> Tensor:
            return sum_across_ranks(self._products(rows, self.precision, compiled=self.compile, cached=False))

        self._fd_choice = None
        if self._mode_for(1) == "fd":
            gen = torch.Generator().manual_seed(1)
            w = torch.randn(1, self.dim, generator=gen, dtype=torch.float64).to(self.device, self.dtype)
            target = reference(w)
            trials: dict[float, float] = {}
            for factor in FD_STEP_FACTORS:
                self.fd_h = factor * fd_step(self.objective.dtype)  # the weights' dtype, not the vectors'
                trials[self.fd_h] = relative_deviation(native(w), target)
            self.fd_h = from_rank0(min(trials, key=trials.__getitem__))
            self._fd_choice = {"fd_step": self.fd_h, "fd_step_trials": {f"{h:.4g}": d for h, d in trials.items()},
                               "fd_step_rule": "the relative step among (4, 2, 1, 1/2, 1/4, 1/8, 1/16) x eps^(1/3) of "
                                               "the weights' dtype with the smallest deviation on a Gaussian vector "
                                               "(seed 1)",
                               "vectors": 2, "hvps": 2 + 1 + len(FD_STEP_FACTORS),
                               "hvps_are": "2 exact float32 products and finite-difference ones (two gradients each)"}
        return reference(v), native(v)

    def _check_details(self) -> dict[str, object]:
        details: dict[str, object] = {"mode": self.modes.get("single")}
        if self.objective.dtype in LOW_PRECISION:
            details.update(weights=str(self.objective.dtype).removeprefix("torch."),
                           reference="rev-rev products of a float32 copy of the weights and data",
                           **(self._fd_choice or {}))
        return details

    def _attention_retry(self, run: Callable[[], _T]) -> _T:
        """``run()``; when it fails in a fused attention kernel (no double backward or forward mode), again
        with the math SDPA backend, which the objective keeps using and records."""
        try:
            return run()
        except (RuntimeError, NotImplementedError) as err:
            loaded = self.objective.loaded
            if loaded.math_attention or not is_fused_attention_error(err):
                raise
            loaded.use_math_attention(f"detected at the first product ({type(err).__name__}: "
                                      f"{str(err).splitlines()[0][:160]})")
            self._graphs, self._graph_key = [], None  # cached graphs hold the fused kernel's backward
            return run()

    @contextlib.contextmanager
    def _backend_settings(self, precision: ProductPrecision | None = None) -> Iterator[None]:
        saved = torch.backends.cudnn.benchmark
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = self.cudnn_benchmark
        try:
            with product_precision(precision or self.precision, self.device):
                yield
        finally:
            torch.backends.cudnn.benchmark = saved

    # ----------------------------------------------------------------------------- graph cache
    def _state_key(self) -> tuple[tuple[int, int], ...]:
        model = self.objective.model
        return tuple((t.data_ptr(), t._version) for t in (*model.parameters(), *model.buffers()))

    def _refresh_graphs(self, params: dict[str, Tensor]) -> None:
        key = self._state_key()
        if key != self._graph_key:
            self._graphs = []  # free the old graphs before building new ones
            self._graphs = [gradient_graph(self.objective, params, b) for b in self.objective.batches]
            self._graph_key = key

    def _decide_cache(self) -> None:
        """Cache every batch's graph when their estimated memory fits in half the free memory."""
        self._cache_pending = False
        if self.objective.streamed:  # a streamed probe set is read afresh for each product, never kept
            self.selection["cache_graphs"] = {"chosen": False, "reason": "streamed probe set"}
            return
        params = self._params()
        with self._backend_settings(), self.objective.mode():
            first, nbytes = measured_gradient_graph(self.objective, params, self.objective.batches[0])
        local = sum(b.size for b in self.objective.batches)
        estimate = int(nbytes * local / self.objective.batches[0].size)
        free = available_bytes(self.device)
        fits = from_rank0(free is not None and estimate <= free // 2)  # every rank makes rank 0's choice
        record: dict[str, object] = {"chosen": fits, "estimate_bytes": estimate,
                                     "rule": "cache when the graphs of all batches fit in half the free memory"}
        self.selection["cache_graphs"] = record
        if fits:
            try:
                with self._backend_settings(), self.objective.mode():
                    batches = cast("list[Batch]", self.objective.batches)
                    rest = [gradient_graph(self.objective, params, b) for b in batches[1:]]
            except torch.OutOfMemoryError:  # the estimate was too low: products without the cache
                del first
                torch.cuda.empty_cache()
                record.update(chosen=False, reason="out of memory while building the graphs")
                return
            self.cache_graphs = True
            self.modes = {"single": "rev-rev", "block": "rev-rev"}
            if self.requested == "auto":
                self.selection["mode"] = {"chosen": "rev-rev", "how": "decided from architecture",
                                          "reason": "cached gradient graphs are multiplied by double backward; "
                                                    "nothing is timed"}
            self._graphs, self._graph_key = [first, *rest], self._state_key()

    # ---------------------------------------------------------------------------- auto mode
    def _trial(self, mode: str, rows: Tensor, batch: Batch) -> float:
        fn = HVP_MODES[mode]
        params = self._params()
        with self._backend_settings(), self.objective.mode():
            fn(self.objective, params, batch, rows)  # warm-up (kernels, caches)
            clock = Stopwatch(self.device)
            fn(self.objective, params, batch, rows)
            return clock.seconds() / rows.shape[0]

    def _trial_batch(self) -> tuple[Batch, int | float]:
        """The batch the modes are timed on: on the CPU the first :data:`TRIAL_EXAMPLES` rows of the first
        batch (both modes cost about the same per example at any batch size there, so their ratio is what
        the whole batch would show, at a fraction of the cost); elsewhere (a GPU is not busy on a small
        batch) and for batches counted by ``count_fn``, the whole first batch."""
        first = self.objective.batches[0]
        if self.device.type != "cpu" or self.objective.count_fn is not None:
            return first, first.size
        try:
            n = structure.rows(first.data, 0)
        except DataError:
            return first, first.size
        if n <= TRIAL_EXAMPLES:
            return first, first.size
        return Batch(structure.slice_rows(first.data, 0, TRIAL_EXAMPLES), TRIAL_EXAMPLES), TRIAL_EXAMPLES

    def _time_modes(self, rows: Tensor, batch: Batch) -> tuple[dict[str, float], dict[str, str]]:
        seconds: dict[str, float] = {}
        failures: dict[str, str] = {}
        for mode in ("fwd-rev", "rev-rev"):
            try:
                seconds[mode] = self._attention_retry(lambda: self._trial(mode, rows, batch))  # noqa: B023 (called at once)
            except (RuntimeError, NotImplementedError) as err:
                failures[mode] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
        return seconds, failures

    def _timing_key(self, m: int) -> tuple[object, ...]:
        """What decides which product mode is faster: architecture (class, parameter names and shapes),
        loss, device, precision, BN mode, the batches' shapes and the probes per pass."""
        obj = self.objective
        return (type(obj.model).__qualname__, tuple(zip(obj.names, map(tuple, obj.shapes))),
                type(obj.loss_fn).__qualname__, str(self.device), str(self.dtype), self.precision, obj.bn,
                tuple(tuple((tuple(t.shape), str(t.dtype)) for t in structure.leaves(b.data)) for b in obj.batches), m)

    def _pick_mode(self, m: int) -> str:
        """The faster exact mode for ``m`` probes per pass: remembered from this process, read from the on-disk
        cache (:mod:`~sharpscope.curvature.operators.mode_cache`), or timed now (and stored there); the record
        says which (``"how"``)."""
        key = self._timing_key(m)
        if key in _TIMED_CHOICES:
            record = {**_TIMED_CHOICES[key], "remembered": True, "how": "timed earlier in this process"}
            self.selection[f"probes={m}"] = record
            return str(record["chosen"])
        stored, where = mode_cache.load(key, self.device)
        hit = stored.get("chosen") if stored is not None and stored.get("chosen") in ("fwd-rev", "rev-rev") else None
        hit = from_rank0(hit)  # every rank reads rank 0's entry or times with it
        if hit is not None:
            record = {**(stored or {}), "chosen": hit, "remembered": True,
                      "how": "timed in an earlier process, read from the on-disk cache", "cache_file": where,
                      "cache_version": mode_cache.version_key(self.device)}
            self.selection[f"probes={m}"] = record
            _TIMED_CHOICES[key] = {k: v for k, v in record.items() if k != "remembered"}
            return str(hit)
        gen = torch.Generator().manual_seed(0)
        rows = torch.randn(m, self.dim, generator=gen, dtype=self.dtype).to(self.device)
        first = self.objective.batches[0]
        batch, examples = self._trial_batch()
        seconds, failures = self._time_modes(rows, batch)
        if failures and batch is not first:  # a slice may fail where the whole batch runs: time on the whole batch
            batch, examples = first, first.size
            seconds, failures = self._time_modes(rows, batch)
        if not seconds:
            raise ObjectiveError(f"no Hessian-vector product mode works for this model: {failures}")
        chosen = from_rank0(min(seconds, key=seconds.__getitem__))  # every rank uses rank 0's choice
        timed: dict[str, object] = {"trial_seconds_per_probe": seconds, "failed": failures, "chosen": chosen,
                                    "how": "timed", "trial_examples": examples,
                                    "trial_rule": f"warm-up and one timed product of each mode on the first "
                                                  f"{TRIAL_EXAMPLES} examples of the first batch on the CPU, the "
                                                  "whole first batch elsewhere or when a slice fails"}
        timed["cache_file"] = mode_cache.store(key, self.device, timed)
        self.selection[f"probes={m}"] = timed
        _TIMED_CHOICES[key] = dict(timed)
        return chosen

    def describe(self) -> dict[str, object]:
        """The objective's record with the product mode (requested, chosen and how), block size, precision,
        graph cache and cuDNN autotuning."""
        return {**self.objective.describe(), "hvp_mode": self.mode, "hvp_mode_requested": self.requested,
                "mode_selection": self.selection, "block_size": self.block_size,
                "product_precision": self.precision_record(),
                "cache_graphs": self.graph_cache,
                "cudnn_benchmark": self.cudnn_benchmark if self.device.type == "cuda" else None}
