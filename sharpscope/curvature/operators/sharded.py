"""Hessian-vector products of a model whose parameters are sharded over processes (FSDP2).

A model wrapped with ``torch.distributed.fsdp.fully_shard`` keeps on each rank a slice of every
parameter (rows of dimension 0), gathers the whole parameters only inside its forward and backward
passes, and returns each gradient as the same slice. Double backward and forward-mode AD do not pass
through that gathering, so the product is a central finite difference of two ordinary gradients,

    H v ≈ (∇L(θ + h v̂) − ∇L(θ − h v̂)) / (2h) · ‖v‖,      v̂ = v / ‖v‖,

each gradient one ordinary sharded forward and backward pass over the probe set. Every vector is
sharded exactly like the parameters: a rank holds, for each parameter, the slice of the vector that
matches its slice of that parameter, concatenated in parameter order; no rank ever holds a whole
vector. Inner products and norms are local sums added over the ranks
(:meth:`ShardedHessianOperator.allsum`), so every rank computes the same numbers. Random vectors are
drawn in fixed blocks of every parameter's flat index, each block from its own seed, so a rank draws
only the blocks its slice touches and every layout (any number of ranks, or one process) sees the
same vector.

The step. The error of the central difference is a truncation error ``h²/6 · ‖∇³L[v̂, v̂, ·]‖``
plus the rounding of the two gradients, about ``ε G / h`` for the parameters' machine epsilon ``ε``
and the gradients' scale ``G``. The truncation error is largest along the sharpest directions, the
ones λ_max is made of, so a step that is accurate on random directions can be far off along the top
eigenvector. The default is therefore ``h = √ε`` (``3.5·10⁻⁴`` in float32, ``1.5·10⁻⁸`` in float64), which keeps the error along sharp
directions near ``√ε`` relative and leaves the rounding error on flat ones at about the same size
(the measurements are in ``docs/sharded.md``). :meth:`estimate_error` estimates the truncation error
along a random direction at the current weights from the products at ``h`` and ``2h``.

The weights are saved before the product and copied back after it, bit for bit, also when a
gradient raises; gradients the model held before are put back too.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, get_args

import torch
import torch.distributed as dist
from torch import Tensor, nn

from sharpscope.curvature.operators.linear_operator import LinearOperator
from sharpscope.curvature.operators.objective import Batch, Objective
from sharpscope.curvature.sampling import Distribution
from sharpscope.errors import ConfigError, ObjectiveError
from sharpscope.losses import correct_fraction
from sharpscope.validation import check_choice, check_real, check_type

DRAW_BLOCK = 1 << 16  # elements of a parameter's flat index drawn from one seed


@dataclass(frozen=True)
class Slice:
    """One parameter's slice on this process: where it sits in the parameter's flat index."""

    name: str
    param: nn.Parameter
    global_numel: int
    offset: int  # flat index (in the whole parameter) of the slice's first element
    numel: int


def _is_dtensor(t: object) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without distributed tensors
        return False
    return isinstance(t, DTensor)


def local_part(t: Tensor) -> Tensor:
    """The local slice of a parameter or gradient (the tensor itself when it is not sharded)."""
    return t.to_local() if _is_dtensor(t) else t  # type: ignore[attr-defined]


def _group(params: dict[str, nn.Parameter]) -> Any:
    """The process group the sharded parameters share (``None``: none sharded)."""
    meshes = [p.device_mesh for p in params.values() if _is_dtensor(p)]  # type: ignore[attr-defined]
    if not meshes:
        return None
    if any(m != meshes[0] for m in meshes):
        raise ConfigError("the sharded parameters live on different device meshes; the sharded operator needs one "
                          "mesh for the whole model (fully_shard every block with the same mesh)", argument="model")
    mesh = meshes[0]
    if mesh.ndim != 1:
        raise ConfigError(f"the parameters are sharded over a {mesh.ndim}-dimensional device mesh (HSDP); the sharded "
                          "operator supports a 1-dimensional mesh", argument="model")
    return mesh.get_group()


def shard_slices(params: dict[str, nn.Parameter], group: Any) -> list[Slice]:
    """Where each selected parameter's local slice sits in its flat index.

    A parameter sharded along dimension 0 (FSDP2's layout) holds a block of rows; its offset is the
    rows held by the ranks before this one (gathered once) times the elements of a row. Under a
    process group every parameter must be sharded so: a replicated parameter would be counted once
    per rank in every inner product."""
    for name, p in params.items():
        if group is not None and not _is_dtensor(p):
            raise ConfigError(f"parameter {name!r} is not sharded while others are: wrap the model's root with "
                              "fully_shard too, so that every parameter is sharded", argument="model")
        if _is_dtensor(p):
            placements = p.placements  # type: ignore[attr-defined]
            if len(placements) != 1 or not placements[0].is_shard(0):
                raise ConfigError(f"parameter {name!r} is placed as {placements}; the sharded operator supports "
                                  "parameters sharded along dimension 0 (FSDP2's default)", argument="model")
    rows = [local_part(p).shape[0] if p.ndim > 0 else 1 for p in params.values()]
    before = [0] * len(rows)
    if group is not None:
        mine = torch.tensor(rows, dtype=torch.int64)
        every = [torch.zeros_like(mine) for _ in range(dist.get_world_size(group))]
        dist.all_gather(every, mine, group=group)
        stacked = torch.stack(every)
        me = dist.get_rank(group)
        before = stacked[:me].sum(dim=0).tolist()
        totals = stacked.sum(dim=0).tolist()
        for (name, p), total in zip(params.items(), totals):
            if p.ndim > 0 and total != p.shape[0]:
                raise ConfigError(f"parameter {name!r}: the ranks' slices hold {total} rows of {p.shape[0]}; "
                                  "the sharded operator needs each row on exactly one rank", argument="model")
    out = []
    for (name, p), r0 in zip(params.items(), before):
        row = math.prod(p.shape[1:]) if p.ndim > 0 else 1
        out.append(Slice(name, p, p.numel(), int(r0) * row, local_part(p).numel()))
    return out


def divide_factor(model: nn.Module, world: int) -> float:
    """What FSDP divides the ranks' summed gradients by: the data-parallel world size unless the user set
    another factor (``set_gradient_divide_factor``); 1 for a model that is not sharded."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover
        return 1.0
    factors: set[float] = set()
    for module in model.modules():
        if isinstance(module, FSDPModule):
            state = module._get_fsdp_state()
            for group in getattr(state, "_fsdp_param_groups", []):
                factor = getattr(group, "gradient_divide_factor", None)
                factors.add(float(world) if factor is None else float(factor))
    if len(factors) > 1:
        raise ConfigError(f"the model's FSDP modules divide gradients by different factors {sorted(factors)}; "
                          "the sharded operator needs one", argument="model")
    return factors.pop() if factors else 1.0


def _mix(*values: int) -> int:
    """A 63-bit seed from integers (SplitMix64 finaliser over their sequence)."""
    x = 0x9E3779B97F4A7C15
    for v in values:
        x = (x ^ (v & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        x = (x ^ (x >> 27)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
    return x & 0x7FFFFFFFFFFFFFFF


def draw_slice(seed: int, index: int, part: Slice, distribution: str) -> Tensor:
    """Elements ``offset … offset + numel − 1`` of parameter ``index``'s flat index of the vector drawn
    from ``seed``: the blocks of :data:`DRAW_BLOCK` elements they touch, each from its own seed."""
    out = torch.empty(part.numel, dtype=torch.float64)
    stop = part.offset + part.numel
    for block in range(part.offset // DRAW_BLOCK, -(-stop // DRAW_BLOCK)):
        lo, hi = block * DRAW_BLOCK, min((block + 1) * DRAW_BLOCK, part.global_numel)
        gen = torch.Generator().manual_seed(_mix(seed, index, block))
        if distribution == "gaussian":
            values = torch.randn(hi - lo, generator=gen, dtype=torch.float64)
        else:
            values = torch.randint(0, 2, (hi - lo,), generator=gen).to(torch.float64).mul_(2).sub_(1)
        a, b = max(lo, part.offset), min(hi, stop)
        out[a - part.offset:b - part.offset] = values[a - lo:b - lo]
    return out


class ShardedHessianOperator(LinearOperator):
    """``v ↦ H v`` of an objective whose model is sharded with ``fully_shard``, on sharded vectors.

    Also works on a model that is not sharded (one process, or every rank's own copy outside a
    process group): its vectors are then whole, and with the same seed it draws the same vectors as
    the sharded form, so the two agree to rounding. ``step`` is the perturbation length ``h`` (default:
    see the module docstring); ``dim`` is the length of this rank's slice, ``global_dim`` the number of
    parameters. The objective's examples may be split over the ranks as for the data-parallel
    operator: the gradient is then the example-weighted mean over all ranks' examples.
    """

    def __init__(self, objective: Objective, *, step: float | None = None) -> None:
        check_type("objective", objective, Objective, "a sharpscope Objective")
        if step is not None:
            check_real("step", step, low=0.0, low_open=True)
        if objective._upcast:
            raise ConfigError("the sharded operator uses the parameters as they are; with half-precision parameters "
                              "give Objective(weight_precision='native') or keep float32 master weights", argument="objective")
        self.objective = objective
        self.lengths_created: set[int] = set()  # lengths of the flat vectors this operator allocated
        self.group = _group(objective.params)
        if self.group is None and dist.is_available() and dist.is_initialized():
            raise ConfigError("under a process group the sharded operator needs a model sharded with fully_shard; "
                              "for a model every rank holds whole, use HessianOperator (data-parallel)",
                              argument="objective")
        self.world = dist.get_world_size(self.group) if self.group is not None else 1
        self.slices = shard_slices(objective.params, self.group)
        super().__init__(sum(s.numel for s in self.slices), objective.dtype, objective.device)
        self._global_dim = sum(s.global_numel for s in self.slices)
        self.divide = divide_factor(objective.model, self.world)
        self.num_batches = self.common_count(len(objective.counts), largest=True)
        eps = float(torch.finfo(self.dtype).eps)
        self.step = float(step) if step is not None else math.sqrt(eps)
        self.step_rule = "given" if step is not None else "sqrt(eps) of the parameters' dtype"
        self.fd_error: float | None = None
        self.gradients = 0

    # ------------------------------------------------------------------ the vector space
    @property
    def global_dim(self) -> int:
        """The total number of parameters, summed over the ranks' slices."""
        return self._global_dim

    @property
    def sharded(self) -> bool:
        """Whether the parameters are split across a process group."""
        return self.group is not None

    def allsum(self, partial: Tensor) -> Tensor:
        """``Σ_ranks partial`` over the shards' group (a copy; ``partial`` itself without a group)."""
        if self.group is not None:
            partial = partial.clone()
            dist.all_reduce(partial, op=dist.ReduceOp.SUM, group=self.group)
        return partial

    def common_count(self, n: int, *, largest: bool = False) -> int:
        """``min_ranks n`` (``max_ranks n`` when ``largest``) over the shards' group."""
        if self.group is None:
            return n
        t = torch.tensor([n], dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX if largest else dist.ReduceOp.MIN, group=self.group)
        return int(t[0])

    def draw_columns(self, m: int, distribution: str, gen: torch.Generator) -> Tensor:
        """The local rows of ``m`` random global vectors: each vector's seed is drawn from ``gen`` and every
        slice is generated from it, so the ranks' slices join into the same vectors
        however the parameters are split."""
        check_choice("distribution", distribution, get_args(Distribution))
        columns = []
        for _ in range(m):
            seed = int(torch.randint(0, 2**62, (1,), generator=gen))
            columns.append(torch.cat([draw_slice(seed, i, s, distribution) for i, s in enumerate(self.slices)]))
        return self._made(torch.stack(columns, dim=1))

    def _made(self, t: Tensor) -> Tensor:
        self.lengths_created.add(int(t.shape[0]))
        return t

    def _norm(self, v: Tensor) -> Tensor:
        return self.allsum((v.double() @ v.double()).reshape(1))[0].sqrt()

    # ------------------------------------------------------------------ weights and gradients
    def _locals(self) -> Iterator[tuple[Slice, Tensor]]:
        """Each parameter's local slice, aliasing its storage (call under ``torch.no_grad``)."""
        for s in self.slices:
            yield s, local_part(s.param)

    @torch.no_grad()
    def _weights(self) -> Tensor:
        return self._made(torch.cat([t.reshape(-1) for _, t in self._locals()]).clone())

    def local_weights(self) -> Tensor:
        """The local slices of the parameters, flat, in the layout of the operator's vectors (a copy)."""
        return self._weights()

    @contextlib.contextmanager
    def at_weights(self, theta: Tensor) -> Iterator[None]:
        """The local slices hold ``theta`` (flat, this rank's layout) inside the block; the weights they
        had are copied back afterwards, bit for bit, also when the block raises."""
        if theta.shape != (self.dim,):
            raise ConfigError(f"weights of shape {tuple(theta.shape)} for an operator of local dimension {self.dim}")
        saved = self._weights()
        try:
            self._set_weights(theta.to(self.dtype))
            yield
        finally:
            self._set_weights(saved)

    @torch.no_grad()
    def _set_weights(self, theta: Tensor, v: Tensor | None = None, h: float = 0.0) -> None:
        """Copy ``θ + h v`` into the local slices (``θ`` alone when ``v`` is None), slice by slice."""
        start = 0
        for s, local in self._locals():
            part = theta[start:start + s.numel].view_as(local)
            local.copy_(part)
            if v is not None:
                local.add_(v[start:start + s.numel].view_as(local).to(local.dtype), alpha=h)
            start += s.numel

    def _passes(self) -> Iterator[tuple[Batch, bool]]:
        """The batches of this rank (flagged True), then its first batch again (flagged False) until it has made as
        many passes as the rank with the most batches: FSDP's collectives need a partner on every rank."""
        first: Batch | None = None
        done = 0
        for batch in self.objective.batches:
            first = first or batch
            yield batch, True
            done += 1
        if first is None:
            raise ObjectiveError("this rank's probe set is empty")
        for _ in range(self.num_batches - done):
            yield first, False

    def _gradient(self) -> Tensor:
        """``∇L`` at the current weights, this rank's slice: every rank runs the same number of forward and
        backward passes (FSDP's collectives need it), a rank with fewer batches repeating its first with
        weight zero; each pass is weighted ``n_b / N`` times FSDP's divide factor, so the reduced slices
        hold the example-weighted mean gradient over all ranks."""
        obj = self.objective
        for p in obj.model.parameters():
            p.grad = None
        with obj.mode():
            for batch, own in self._passes():
                (obj.module_loss(batch) * (batch.size / obj.num_examples * self.divide if own else 0.0)).backward()
        self.gradients += 1
        parts = []
        with torch.no_grad():
            for s, local in self._locals():
                grad = s.param.grad
                parts.append(torch.zeros_like(local).reshape(-1) if grad is None else local_part(grad).reshape(-1))
        return self._made(torch.cat(parts).to(self.dtype))

    def _difference(self, theta: Tensor, v: Tensor, h: float) -> Tensor:
        """``(∇L(θ + h v) − ∇L(θ − h v)) / 2h`` for a unit ``v``."""
        self._set_weights(theta, v, h)
        plus = self._gradient()
        self._set_weights(theta, v, -h)
        return plus.sub_(self._gradient()).div_(2 * h)

    @contextlib.contextmanager
    def _kept(self) -> Iterator[Tensor]:
        """Yield the local weights (a copy); afterwards, also on raise, copy them back and put back the
        gradients the model held."""
        saved = {p: p.grad for p in self.objective.model.parameters()}
        theta = self._weights()
        try:
            yield theta
        finally:
            self._set_weights(theta)
            for p, grad in saved.items():
                p.grad = grad

    def _matmat(self, V: Tensor) -> Tensor:
        out = self._made(torch.zeros_like(V))
        norms = self.allsum((V.double() * V.double()).sum(dim=0)).sqrt()
        with self._kept() as theta:
            for j in range(V.shape[1]):
                if float(norms[j]) > 0:
                    out[:, j] = self._difference(theta, V[:, j] / norms[j].to(V.dtype), self.step) * norms[j].to(V.dtype)
        return out

    def loss(self) -> float:
        """The mean loss over every rank's examples at the current weights (one forward pass per batch)."""
        return self.evaluate(accuracy=False)[0]

    def evaluate(self, accuracy: bool = True) -> tuple[float, float | None]:
        """Mean loss and accuracy over every rank's examples at the current weights, weighted by example
        counts: ``(Σ_b n_b ℓ_b / N, Σ_b n_b acc_b / N)``, one forward pass per batch (ranks with fewer
        batches run extra passes for the others' gathers). The accuracy is None when not asked for or
        when the outputs are not class scores ``(n_b, C)``, ``C ≥ 2``."""
        obj = self.objective
        sums = torch.zeros(2, dtype=torch.float64)
        scores = accuracy and obj.closure is None
        with torch.no_grad(), obj.mode():
            for batch, own in self._passes():
                out = obj.module_output(batch)
                if not own:
                    continue
                loss = obj.module_loss_of(out, batch)
                sums[0] += float(loss) * batch.size
                scores = scores and isinstance(out, Tensor) and out.ndim == 2 and out.shape[1] > 1
                if scores:
                    sums[1] += float(correct_fraction(out, batch.y)) * batch.size  # type: ignore[arg-type]
        scores = self.common_count(int(scores), largest=False) == 1
        total = self.allsum(sums) / float(obj.num_examples)
        return float(total[0]), float(total[1]) if scores else None

    def gradient_norm(self) -> float:
        """``‖∇L‖`` at the current weights (one gradient; the model's own gradients are put back)."""
        with self._kept():
            return float(self._norm(self._gradient()))

    # ------------------------------------------------------------------ accuracy and records
    def estimate_error(self, seed: int = 0) -> float:
        """Relative error of one product at the current weights, ``‖D(h) − D(2h)‖ / (3 ‖D(h)‖)`` for the
        central differences ``D`` along a random unit vector (four gradients; recorded in
        :meth:`precision_record`). Exact for a pure truncation error (which grows as ``h²``); where
        rounding dominates (it grows as ``1/h``) it is of the same order as the error. Along the
        sharpest directions the truncation error can be larger than along a random one."""
        v = self.draw_columns(1, "gaussian", torch.Generator().manual_seed(seed))[:, 0].to(self.dtype)
        v = v / self._norm(v).to(self.dtype)
        with self._kept() as theta:
            one = self._difference(theta, v, self.step)
            two = self._difference(theta, v, 2 * self.step)
        self.fd_error = float(self._norm(one - two) / (3 * self._norm(one)))
        return self.fd_error

    def precision_record(self) -> dict[str, object] | None:
        """The finite-difference step, its rule and the measured deviation of :meth:`estimate_error`."""
        return {"precision": "central finite difference of gradients", "step": self.step, "step_rule": self.step_rule,
                "deviation": self.fd_error,
                "deviation_rule": None if self.fd_error is None else "|D(h) - D(2h)| / (3 |D(h)|), one random vector"}

    def describe(self) -> dict[str, object]:
        """The base record with the sharding (global dimension, world size), the step and the gradients taken."""
        return {**super().describe(), "global_dim": self.global_dim, "world_size": self.world,
                "sharded": self.sharded, "product": "central finite difference of two sharded gradients",
                "step": self.step, "step_rule": self.step_rule, "gradient_divide_factor": self.divide,
                "gradients": self.gradients}


def is_sharded(model: nn.Module) -> bool:
    """Whether any parameter of ``model`` is a distributed tensor (the model went through ``fully_shard``)."""
    return any(_is_dtensor(p) for p in model.parameters())


def blocks_to_shard(model: nn.Module) -> list[nn.Module]:
    """The modules :func:`shard_per_block` wraps before the root: the entries of every ``ModuleList``
    (a transformer's blocks) when the model has any, else the root's children that hold parameters."""
    listed = [m for lst in model.modules() if isinstance(lst, nn.ModuleList) for m in lst
              if any(True for _ in m.parameters())]
    if listed:
        return listed
    return [m for m in model.children() if any(True for _ in m.parameters())]


def shard_per_block(model: nn.Module) -> nn.Module:
    """Shard ``model`` in place as users of FSDP2 do: ``fully_shard`` on each block
    (:func:`blocks_to_shard`), then on the root, over all ranks of the default process group."""
    if not (dist.is_available() and dist.is_initialized()):
        raise ConfigError("sharding a model needs a process group: launch with torchrun (or call "
                          "torch.distributed.init_process_group first)", argument="shard")
    from torch.distributed.fsdp import fully_shard

    for block in blocks_to_shard(model):
        fully_shard(block)
    fully_shard(model)
    return model
