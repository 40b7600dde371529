"""BatchNorm statistics after a SAM step, ASAM's scale invariance, and DDP's first pass."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist
from torch import nn

from sharpscope.optim import SAM, SparseSAM, frozen_bn_stats, maybe_no_sync
from tests.optim.optim_helpers import data, flat, make_closure, mse, params_of, tiny_mlp


def _bn_net(momentum: float | None = 0.1) -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6, momentum=momentum), nn.ReLU(), nn.Linear(6, 2)).double()


def _buffers(model: nn.Module) -> torch.Tensor:
    return torch.cat([b.double().reshape(-1) for b in model.buffers()])


@pytest.mark.parametrize("momentum", [0.1, None])
def test_bn_running_stats_after_sam_step_equal_first_pass_alone(momentum: float | None) -> None:
    x, y = data(n=16)
    model = _bn_net(momentum)
    reference = copy.deepcopy(model)
    with torch.no_grad():
        reference(x)  # the first pass alone (train mode)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.5, lr=0.1, model=model)
    opt.step(make_closure(opt, model, x, y))
    assert torch.equal(_buffers(model), _buffers(reference))
    # without the helper, the second pass would have moved them (so the test can fail)
    naive = _bn_net(momentum)
    opt2 = SAM(naive.parameters(), torch.optim.SGD, rho=0.5, lr=0.1)  # no model: no BN handling
    opt2.step(make_closure(opt2, naive, x, y))
    assert not torch.equal(_buffers(naive), _buffers(reference))


def test_frozen_bn_stats_keeps_batch_statistics_and_restores_flags() -> None:
    x, _ = data(n=16)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Unflatten(1, (1, 6)),
                          nn.InstanceNorm1d(1, track_running_stats=True)).double()
    before = _buffers(model).clone()
    out_train = model(x)  # reference output with batch statistics (updates stats)
    mid = _buffers(model).clone()
    assert not torch.equal(before, mid)
    with frozen_bn_stats(model):
        out = model(x)
        assert not model[1].track_running_stats
    assert torch.equal(_buffers(model), mid)  # neither BN nor InstanceNorm stats moved
    assert torch.allclose(out, out_train, atol=1e-15)  # still batch-statistics normalisation
    assert model[1].track_running_stats and model[3].track_running_stats
    with frozen_bn_stats(None):  # accepted, no-op
        pass


def _relu_net() -> nn.Module:
    torch.manual_seed(11)
    return nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2)).double()


def _perturbed_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, **sam: object) -> float:
    opt = SAM(model.parameters(), torch.optim.SGD, lr=0.0, perturb_eps=0.0, **sam)
    mse(model, x, y).backward()
    opt.first_step()
    with torch.no_grad():
        loss = float(mse(model, x, y))
    opt.second_step(zero_grad=True)
    return loss


def _rescaled(model: nn.Module, c: float) -> nn.Module:
    out = copy.deepcopy(model)
    with torch.no_grad():
        out[0].weight.mul_(c)
        out[0].bias.mul_(c)
        out[2].weight.div_(c)
    return out


def test_asam_perturbed_loss_is_invariant_to_relu_rescaling() -> None:
    x, y = data(n=10, d_in=3)
    base, c = _relu_net(), 4.0
    scaled = _rescaled(base, c)
    with torch.no_grad():
        assert float(mse(base, x, y)) == pytest.approx(float(mse(scaled, x, y)), rel=1e-13)
    rho = 0.5
    asam0 = abs(_perturbed_loss(copy.deepcopy(base), x, y, rho=rho, adaptive=True, eta=0.0)
                - _perturbed_loss(copy.deepcopy(scaled), x, y, rho=rho, adaptive=True, eta=0.0))
    asam = abs(_perturbed_loss(copy.deepcopy(base), x, y, rho=rho, adaptive=True, eta=0.01)
               - _perturbed_loss(copy.deepcopy(scaled), x, y, rho=rho, adaptive=True, eta=0.01))
    sam = abs(_perturbed_loss(copy.deepcopy(base), x, y, rho=rho / 10)
              - _perturbed_loss(copy.deepcopy(scaled), x, y, rho=rho / 10))
    assert asam0 < 1e-12  # exact invariance with T = |w|
    assert sam > 1e-3     # plain SAM is not invariant
    assert asam < sam / 10  # the eta offset breaks invariance only slightly


# --------------------------------------------------------------------------- DDP
@pytest.fixture
def gloo_group():
    if not dist.is_available():
        pytest.skip("torch.distributed not available")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_first_pass_runs_without_gradient_sync_under_ddp(gloo_group: None) -> None:
    x, y = data()
    plain = tiny_mlp()
    ddp = nn.parallel.DistributedDataParallel(tiny_mlp())
    flags: list[bool] = []
    opt = SAM(ddp.parameters(), torch.optim.SGD, rho=0.1, lr=0.1, model=ddp)

    def closure() -> torch.Tensor:
        flags.append(ddp.require_backward_grad_sync)
        opt.zero_grad()
        loss = mse(ddp, x, y)
        loss.backward()
        return loss

    opt.step(closure)
    assert flags == [False, True]  # first pass in no_sync, second pass synchronised
    ref = SAM(plain.parameters(), torch.optim.SGD, rho=0.1, lr=0.1)
    ref.step(make_closure(ref, plain, x, y))
    assert torch.allclose(flat(params_of(ddp.module)), flat(params_of(plain)), atol=1e-15)

    # m-sharpness: only the last group's second backward synchronises
    seen: list[bool] = []

    def loss_fn(model: nn.Module, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        seen.append(ddp.require_backward_grad_sync)
        return mse(model, xb, yb)

    opt.m_sharpness_step(ddp, loss_fn, x, y, m=4)
    assert seen == [False, False, False, False, False, True]
    with maybe_no_sync(ddp):
        assert not ddp.require_backward_grad_sync
    with maybe_no_sync(plain):  # not DDP: no-op
        pass


def test_sparse_sam_bn_and_ddp_share_the_protocol() -> None:
    x, y = data(n=16)
    model = _bn_net()
    reference = copy.deepcopy(model)
    with torch.no_grad():
        reference(x)
    opt = SparseSAM(model.parameters(), torch.optim.SGD, rho=0.5, mask="random", sparsity=0.5, lr=0.1, model=model)
    opt.step(make_closure(opt, model, x, y))
    assert torch.equal(_buffers(model), _buffers(reference))
