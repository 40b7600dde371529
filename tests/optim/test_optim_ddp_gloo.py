"""Two gloo processes on CPU: per-rank perturbations (no all-reduce on the first pass), synced
second pass. Marked slow (process start-up); the single-process DDP test covers the mechanism."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from sharpscope.optim import SAM


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()


def _shard(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + rank)
    return torch.randn(6, 3, generator=g, dtype=torch.float64), torch.randn(6, 1, generator=g, dtype=torch.float64)


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        ddp = nn.parallel.DistributedDataParallel(_model())
        opt = SAM(ddp.parameters(), torch.optim.SGD, rho=0.1, lr=0.1, model=ddp, perturb_eps=0.0)
        x, y = _shard(rank)

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = ((ddp(x) - y) ** 2).mean()
            loss.backward()
            return loss

        opt.step(closure)
        torch.save([p.detach() for p in ddp.module.parameters()], os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _expected() -> list[torch.Tensor]:
    """w − lr · mean_r ∇L_r(w + ρ g_r/‖g_r‖): each rank perturbs with its own gradient."""
    model = _model()
    w = [p.detach().clone() for p in model.parameters()]
    names = [n for n, _ in model.named_parameters()]
    total = [torch.zeros_like(t) for t in w]
    for rank in range(2):
        x, y = _shard(rank)

        def loss_at(vals: list[torch.Tensor]) -> torch.Tensor:
            out = torch.func.functional_call(model, dict(zip(names, vals)), (x,))
            return ((out - y) ** 2).mean()

        vals = [t.clone().requires_grad_(True) for t in w]
        g = torch.autograd.grad(loss_at(vals), vals)
        gn = torch.cat([t.reshape(-1) for t in g]).norm()
        pert = [(a + 0.1 * b / gn).requires_grad_(True) for a, b in zip(w, g)]
        g2 = torch.autograd.grad(loss_at(pert), pert)
        total = [t + 0.5 * b for t, b in zip(total, g2)]
    return [a - 0.1 * b for a, b in zip(w, total)]


@pytest.mark.slow
def test_two_rank_sam_matches_per_replica_perturbation(tmp_path) -> None:
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("gloo not available")
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    expected = _expected()
    for a, b, e in zip(r0, r1, expected):
        assert torch.equal(a, b)  # ranks agree after the synced second pass
        assert torch.allclose(a, e, atol=1e-14, rtol=0)
