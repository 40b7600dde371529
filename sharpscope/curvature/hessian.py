"""The Hessian of an :class:`Objective` as a matrix-free linear operator."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

import torch
from torch import Tensor

from sharpscope.curvature.distributed import from_rank0, sum_across_ranks
from sharpscope.curvature.hvp import HVP_MODES, GradientGraph, apply_graph, gradient_graph
from sharpscope.curvature.linear_operator import LinearOperator
from sharpscope.curvature.objective import Objective
from sharpscope.curvature.precision import fp32_precision
from sharpscope.curvature.sampling import Stopwatch
from sharpscope.errors import ConfigError, ObjectiveError

HVPMode = Literal["auto", "fwd-rev", "rev-rev", "fd"]


class HessianOperator(LinearOperator):
    """``v -> H v`` with ``H = ∇²L(θ)`` the Hessian of the objective's mean loss over the probe set.

    ``H v = Σ_b (n_b / N) H_b v`` is accumulated batch by batch, so memory is bounded by one batch
    times one probe block; under ``torch.distributed`` the sum runs over every rank's batches, so
    all ranks get the same product and run the same algorithm from the same seed. Args:
        objective: the function whose Hessian is taken.
        mode: ``"fwd-rev"``, ``"rev-rev"``, ``"fd"`` (see :mod:`sharpscope.curvature.hvp`), or
            ``"auto"``: time ``fwd-rev`` and ``rev-rev`` on the first batch and keep the faster one
            that works, separately for single products (Lanczos) and for probe blocks (trace,
            density), since vmapping changes which is faster. The timing runs the first time each
            kind of call is made. Finite differences are approximate and never chosen
            automatically. The modes used, and why, are in :meth:`describe`.
        block_size: probe vectors per vmapped pass; on out-of-memory the failing block is halved
            (and the smaller size kept) until a single product fails, which raises ObjectiveError.
        allow_tf32: let CUDA use TF32 (about 1e-3 relative error per product); off by default.
        cache_graphs: with ``rev-rev`` products, keep every batch's gradient graph between calls so
            each product is one double backward per batch (PyHessian's single-batch trick, for any
            number of batches). Costs the activation memory of all batches at once. The cache is
            rebuilt when any parameter or buffer of the model changes (tracked by tensor versions).
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
                 allow_tf32: bool = False, cache_graphs: bool = False, cudnn_benchmark: bool = True) -> None:
        if mode not in ("auto", *HVP_MODES):
            raise ConfigError(f"mode must be one of auto, {', '.join(HVP_MODES)}; got {mode!r}")
        if block_size < 1:
            raise ConfigError(f"block_size must be positive, got {block_size}")
        super().__init__(objective.dim, objective.dtype, objective.device)
        self.objective = objective
        self.block_size = block_size
        self.allow_tf32 = allow_tf32
        self.requested = mode
        self.cache_graphs = cache_graphs
        self.cudnn_benchmark = cudnn_benchmark
        self._graphs: list[GradientGraph] = []
        self._graph_key: tuple[tuple[int, int], ...] | None = None
        if cache_graphs and mode == "auto":
            mode = "rev-rev"  # the cache exists for double backward only
        elif cache_graphs and mode != "rev-rev":
            raise ConfigError(f"cache_graphs needs mode='rev-rev' (or 'auto'), got {mode!r}")
        self.selection: dict[str, dict[str, object]] = {}
        self.modes: dict[str, str] = {} if mode == "auto" else {"single": mode, "block": mode}
        if cache_graphs:
            self.selection["cache_graphs"] = {"chosen": "rev-rev", "reason": "graph cache requested"}

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
            self.modes[regime] = self._pick_mode(1 if regime == "single" else self.block_size)
        return self.modes[regime]

    # ------------------------------------------------------------------------------ products
    def _params(self) -> dict[str, Tensor]:
        return self.objective.param_values()

    def _matmat(self, V: Tensor) -> Tensor:
        rows = V.T.contiguous()
        out = torch.zeros_like(rows)
        fn = None if self.cache_graphs else HVP_MODES[self._mode_for(min(rows.shape[0], self.block_size))]
        params = self._params()
        with self._backend_settings(), self.objective.mode():
            if self.cache_graphs:
                self._refresh_graphs(params)
            for index, (batch, w) in enumerate(zip(self.objective.batches, self.objective.weights())):
                start = 0
                while start < rows.shape[0]:
                    stop = min(start + self.block_size, rows.shape[0])
                    block = rows[start:stop]
                    try:
                        if fn is None:
                            out[start:stop] += w * apply_graph(self.objective, self._graphs[index], block, keep=True)
                        else:
                            out[start:stop] += w * fn(self.objective, params, batch, block)
                    except torch.OutOfMemoryError:
                        if stop - start == 1:
                            raise ObjectiveError(
                                f"out of GPU memory for one Hessian-vector product on a batch of {batch.size} "
                                "examples; split the probe set into smaller batches (batch_size=...)") from None
                        self.block_size = (stop - start) // 2  # halve the block that failed, and keep it so
                        torch.cuda.empty_cache()
                        continue
                    start = stop
        sum_across_ranks(out)
        if not torch.isfinite(out).all():
            raise ObjectiveError("a Hessian-vector product is not finite: the loss or its derivatives "
                                 "overflow at these parameters")
        return out.T

    @contextlib.contextmanager
    def _backend_settings(self) -> Iterator[None]:
        saved = torch.backends.cudnn.benchmark
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = self.cudnn_benchmark
        try:
            with fp32_precision(self.allow_tf32):
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

    # ---------------------------------------------------------------------------- auto mode
    def _trial(self, mode: str, rows: Tensor) -> float:
        fn = HVP_MODES[mode]
        batch, params = self.objective.batches[0], self._params()
        with self._backend_settings(), self.objective.mode():
            fn(self.objective, params, batch, rows)  # warm-up (kernels, caches)
            clock = Stopwatch(self.device)
            fn(self.objective, params, batch, rows)
            return clock.seconds() / rows.shape[0]

    def _pick_mode(self, m: int) -> str:
        gen = torch.Generator().manual_seed(0)
        rows = torch.randn(m, self.dim, generator=gen, dtype=self.dtype).to(self.device)
        seconds: dict[str, float] = {}
        failures: dict[str, str] = {}
        for mode in ("fwd-rev", "rev-rev"):
            try:
                seconds[mode] = self._trial(mode, rows)
            except (RuntimeError, NotImplementedError) as err:
                failures[mode] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
        if not seconds:
            raise ObjectiveError(f"no Hessian-vector product mode works for this model: {failures}")
        chosen = from_rank0(min(seconds, key=seconds.__getitem__))  # every rank uses rank 0's choice
        self.selection[f"probes={m}"] = {"trial_seconds_per_probe": seconds, "failed": failures, "chosen": chosen}
        return chosen

    def describe(self) -> dict[str, object]:
        return {**self.objective.describe(), "hvp_mode": self.mode, "hvp_mode_requested": self.requested,
                "mode_selection": self.selection, "block_size": self.block_size, "tf32": self.allow_tf32,
                "cache_graphs": self.cache_graphs,
                "cudnn_benchmark": self.cudnn_benchmark if self.device.type == "cuda" else None}
