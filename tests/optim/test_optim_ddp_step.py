"""A DDP SAM step on two gloo processes equals a single-process step on the union of the two batches.

What "equals" means. DDP averages gradients over ranks, and each rank holds half of an 8-example
batch (equal halves, so the average of the two half-batch means is the mean over the union).

* ``SAM(..., model=ddp).step(closure)`` runs the first pass under ``no_sync``: rank ``r`` ascends
  along its *own* gradient, ``ε_r = ρ g_r / ‖g_r‖``, and the synced second pass averages
  ``∇L_r(w + ε_r)``. That is m-sharpness with ``m`` = the per-rank batch (Foret et al. 3.3), i.e.
  ``SAM.m_sharpness_step(model, loss, x, y, m=4)`` on the union in one process — not plain SAM.
* ``SAM(...)`` without ``model=`` lets DDP all-reduce the first pass too: ``ε`` uses the gradient
  of the union, and the step is plain SAM on the union.
* ``m_sharpness_step(ddp, ..., m=2)`` on each half equals ``m_sharpness_step(..., m=2)`` on the
  union: four groups of two, each weighted 2/8.

Two steps with momentum 0.9, float64; the ranks must agree exactly and match to rounding.
"""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from sharpscope.optim import SAM
from tests.gloo import spawn_ranks

pytestmark = pytest.mark.usefixtures("single_thread")

RHO, LR, STEPS = 0.1, 0.2, 2
CASES = ("per-rank-ascent", "synced-ascent", "m-sharpness-2")


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double()


def union() -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(7)
    return torch.randn(8, 3, generator=g, dtype=torch.float64), torch.randn(8, 2, generator=g, dtype=torch.float64)


def mse(net: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    return ((net(x) - y) ** 2).mean()


def sam(params: object, net: nn.Module | None) -> SAM:
    return SAM(params, torch.optim.SGD, rho=RHO, lr=LR, momentum=0.9, model=net, perturb_eps=0.0)


def run_steps(net: nn.Module, opt: SAM, x: Tensor, y: Tensor, case: str) -> None:
    def closure() -> Tensor:
        opt.zero_grad()
        loss = mse(net, x, y)
        loss.backward()
        return loss

    for _ in range(STEPS):
        if case == "m-sharpness-2":
            opt.m_sharpness_step(net, mse, x, y, m=2)
        else:
            opt.step(closure)


def worker(rank: int, folder: str) -> None:
    """Both ranks step every case; the DDP wrappers and optimizers are freed before the group is torn
    down (:func:`tests.gloo.spawn_ranks`), so their reducers release it while it is alive."""
    held: list[object] = []
    try:
        x, y = union()
        half = slice(4 * rank, 4 * rank + 4)
        out = {}
        for case in CASES:
            ddp = nn.parallel.DistributedDataParallel(model())
            opt = sam(ddp.parameters(), None if case == "synced-ascent" else ddp)
            held += [ddp, opt]
            run_steps(ddp, opt, x[half], y[half], case)
            out[case] = [p.detach().clone() for p in ddp.module.parameters()]
        torch.save(out, Path(folder) / f"rank{rank}.pt")
    finally:
        del held[:]
        ddp = opt = None  # type: ignore[assignment]
        gc.collect()


def single_process(case: str) -> list[Tensor]:
    """The step in one process on all 8 examples: m-sharpness with m = 4 (per-rank ascent), plain SAM, or m = 2."""
    net = model()
    opt = sam(net.parameters(), net)
    x, y = union()
    if case == "per-rank-ascent":
        for _ in range(STEPS):
            opt.m_sharpness_step(net, mse, x, y, m=4)
    else:
        run_steps(net, opt, x, y, case)
    return [p.detach() for p in net.parameters()]


def test_ddp_sam_steps_equal_single_process_steps_on_the_union(tmp_path: Path) -> None:
    expected = {case: single_process(case) for case in CASES}
    spawn_ranks(worker, tmp_path)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    start = [p.detach() for p in model().parameters()]
    for case in CASES:
        for a, b, e, w in zip(r0[case], r1[case], expected[case], start):
            assert torch.equal(a, b), f"{case}: ranks disagree"
            torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-14, msg=case)
            assert not torch.allclose(a, w)  # the steps moved every tensor
    # the three steps are different steps: per-rank ascent is not plain SAM on the union
    assert not torch.allclose(expected["per-rank-ascent"][0], expected["synced-ascent"][0], rtol=1e-8, atol=0)
