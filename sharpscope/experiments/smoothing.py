"""The randomized-smoothing identity behind RS, checked on a real network.

For ``u ~ Unif(S^{d−1})`` (``E[u] = 0``, ``E[uuᵀ] = I/d``), a Taylor expansion of the gradient gives

    E_u ∇f(x + ρu) − ∇f(x) = (ρ²/2) ∇tr̄(x) + O(ρ³),      tr̄(x) = tr ∇²f(x) / d,

so RS's perturbed gradient carries, in expectation, a step down the normalised Hessian trace.
:func:`smoothing_identity` estimates the left side by the mean of ``draws`` sampled directions and the
right side by differentiating a Hutchinson estimate of the trace,
``∇ tr H ≈ (1/m) Σ_j ∇_x (z_jᵀ ∇²f(x) z_j)`` with Rademacher ``z_j``, and reports their cosine
similarity as a function of the number of draws. Both sides are Monte-Carlo estimates: the cosine is
limited by the noise of either.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from sharpscope.curvature.sampling import make_generator
from sharpscope.losses import get_loss
from sharpscope.optim import sample_unit_sphere
from sharpscope.validation import check_int


def _flat_loss(model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor], x: Tensor,
               y: Tensor) -> tuple[Callable[[Tensor], Tensor], Tensor]:
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = [p.detach() for n, p in model.named_parameters() if p.requires_grad]
    shapes = [p.shape for p in params]
    sizes = [p.numel() for p in params]
    buffers = dict(model.named_buffers())

    def f(theta: Tensor) -> Tensor:
        parts = [t.view(s) for t, s in zip(theta.split(sizes), shapes)]
        return loss_fn(functional_call(model, {**dict(zip(names, parts)), **buffers}, (x,)), y)

    return f, torch.cat([p.reshape(-1) for p in params])


def smoothing_identity(model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, y: Tensor, *,
                       rhos: Sequence[float] = (1e-3, 1e-2, 1e-1), draws: int = 256, probes: int = 64,
                       counts: Sequence[int] = (16, 64, 256), seed: int = 0) -> dict[str, Any]:
    """Cosine of ``mean_u ∇f(x + ρu) − ∇f(x)`` (over the first ``n`` draws, ``n`` in ``counts``) with
    ``(ρ²/2)∇tr̄(x)`` for each ρ, and the ratio of their norms. The model is evaluated in eval mode in its
    own dtype (float64 recommended: the differences are of order ρ²)."""
    draws = check_int("draws", draws, low=1)
    probes = check_int("probes", probes, low=1)
    counts = sorted({min(check_int("count", c, low=1), draws) for c in counts})
    started = time.perf_counter()
    model.eval()
    f, theta = _flat_loss(model, loss_fn, x, y)
    d = theta.numel()
    grad = torch.func.grad(f)
    g0 = grad(theta)
    gen = make_generator(seed)
    tr_grad = torch.zeros_like(theta)
    for _ in range(probes):
        z = (torch.randint(0, 2, (d,), generator=gen, dtype=torch.float64) * 2 - 1).to(theta)

        def quad(t: Tensor, z: Tensor = z) -> Tensor:
            return torch.func.jvp(grad, (t,), (z,))[1] @ z  # zᵀ ∇²f(t) z

        tr_grad += torch.func.grad(quad)(theta)
    tr_grad /= probes
    out: dict[str, Any] = {"dim": d, "examples": int(x.shape[0]), "draws": draws, "probes": probes, "rhos": {}}
    for rho in rhos:
        target = (rho**2 / 2) * tr_grad / d
        total = torch.zeros_like(theta)
        rows = []
        for i in range(1, draws + 1):
            u = sample_unit_sphere([theta], gen)[0]
            total += grad(theta + rho * u) - g0
            if i in counts:
                mean = total / i
                cos = float(mean @ target) / (float(mean.norm() * target.norm()) or math.nan)
                rows.append({"draws": i, "cosine": cos, "norm_ratio": float(mean.norm() / target.norm())})
        out["rhos"][f"{rho:g}"] = rows
    out["seconds"] = time.perf_counter() - started
    return out


def identity_at_run(run_dir: str | Path, *, examples: int = 256, **kwargs: Any) -> dict[str, Any]:
    """:func:`smoothing_identity` at the latest checkpoint of a run directory, on the first ``examples``
    examples of its training set, in float64."""
    from sharpscope.track import TrainConfig
    from sharpscope.track.build import build_data, build_model, load_initial_weights

    cfg = TrainConfig.from_dict(json.loads((Path(run_dir) / "config.json").read_text()))
    model, spec = build_model(cfg, torch.device("cpu"), torch.float64)
    where = load_initial_weights(str(run_dir), model, spec)
    train_set, _ = build_data(cfg)
    n = min(examples, len(train_set))
    x, y = train_set.x[:n].double(), train_set.y[:n]
    result = smoothing_identity(model, get_loss(cfg.loss), x, y, **kwargs)
    result["checkpoint"] = where
    return result
