"""Sparse SAM masks: exact density, N:M groups, cosine drop-and-regrow, ‖ε‖ ≤ ρ, Fisher scores."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sharpscope.errors import ConfigError
from sharpscope.io.migrations import SCORED_KEY
from sharpscope.optim import (
    SAM,
    SparseSAM,
    cosine_drop_rate,
    dynamic_mask_update,
    empirical_fisher_diagonal,
    fisher_mask,
    nm_mask,
    num_kept,
    random_mask,
)
from tests.optim.optim_helpers import data, flat, grad_at, make_closure, mse, params_of, tiny_mlp

SHAPES = [(6, 4), (6,), (2, 3, 2, 2), (10,)]  # d = 24 + 6 + 24 + 10 = 64


def _scores(seed: int, shapes=SHAPES) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]


def _count(mask: list[torch.Tensor]) -> int:
    return int(sum(int(m.sum()) for m in mask))


def test_num_kept_is_exact_despite_floating_point() -> None:
    assert num_kept(10, 0.9) == 1      # (1 − 0.9)·10 = 0.999… in floats
    assert num_kept(10, 0.3) == 7      # 0.3·10 = 3.0000000000000004
    assert num_kept(100, 0.7) == 30
    assert num_kept(7, 0.5) == 3       # ⌈3.5⌉ = 4 coordinates off (official: d − ⌈s·d⌉)
    assert num_kept(64, 0.0) == 64 and num_kept(64, 1.0) == 0
    with pytest.raises(ConfigError, match="sparsity"):
        num_kept(10, 1.5)


@pytest.mark.parametrize("sparsity", [0.0, 0.25, 0.5, 0.75, 0.875, 1.0])
def test_fisher_mask_density_is_exactly_one_minus_s(sparsity: float) -> None:
    scores = [s.abs() for s in _scores(0)]
    mask = fisher_mask(scores, sparsity)
    assert [m.shape for m in mask] == [s.shape for s in scores]
    assert all(m.dtype == torch.bool for m in mask)
    assert _count(mask) / 64 == 1 - sparsity  # exact: (1 − s)·64 is an integer here
    kept = flat(scores)[flat(mask)]
    dropped = flat(scores)[~flat(mask)]
    if kept.numel() and dropped.numel():
        assert kept.min() >= dropped.max()  # the top scores, globally across tensors


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(1, 30), min_size=1, max_size=5), sparsity=st.floats(0.0, 1.0), seed=st.integers(0, 1000))
def test_fisher_and_random_masks_keep_exactly_num_kept(sizes: list[int], sparsity: float, seed: int) -> None:
    scores = _scores(seed, [(s,) for s in sizes])
    d = sum(sizes)
    assert _count(fisher_mask(scores, sparsity)) == num_kept(d, sparsity)
    assert _count(random_mask(scores, sparsity, torch.Generator().manual_seed(seed))) == num_kept(d, sparsity)


def test_random_mask_is_reproducible_from_the_generator() -> None:
    like = _scores(0)
    a = random_mask(like, 0.5, torch.Generator().manual_seed(1))
    b = random_mask(like, 0.5, torch.Generator().manual_seed(1))
    c = random_mask(like, 0.5, torch.Generator().manual_seed(2))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


@pytest.mark.parametrize(("n", "m"), [(2, 4), (1, 4), (3, 8), (4, 4)])
def test_nm_mask_every_group_has_exactly_n_ones(n: int, m: int) -> None:
    g = torch.Generator().manual_seed(0)
    conv = torch.randn(8, 4, 3, 3, generator=g, dtype=torch.float64)   # fan_in 36
    lin = torch.randn(5, 16, generator=g, dtype=torch.float64)         # fan_in 16
    bias = torch.randn(5, generator=g, dtype=torch.float64)
    odd = torch.randn(3, 6, generator=g, dtype=torch.float64)           # fan_in 6
    masks = nm_mask([conv, lin, bias, odd], n, m)
    for score, mask in zip((conv, lin), masks[:2]):
        fan_in = score[0].numel()
        if fan_in % m:
            continue
        groups = mask.reshape(score.shape[0], -1, m)
        assert bool((groups.sum(-1) == n).all())
        s = score.reshape(score.shape[0], -1, m)
        # the kept entries are the n largest of each group
        kept_min = torch.where(groups, s, torch.full_like(s, math.inf)).min(-1).values
        drop_max = torch.where(~groups, s, torch.full_like(s, -math.inf)).max(-1).values
        assert bool((kept_min >= drop_max).all())
    assert bool(masks[2].all())  # 1-D tensors are always perturbed
    if 6 % m:
        assert bool(masks[3].all())  # fan_in not a multiple of m: left dense


def test_nm_mask_rejects_n_above_m() -> None:
    with pytest.raises(ConfigError, match="n must be <= m"):
        nm_mask([torch.zeros(2, 4)], 5, 4)


def test_cosine_drop_rate_schedule() -> None:
    assert cosine_drop_rate(0, 100, 0.5) == 0.5
    assert cosine_drop_rate(50, 100, 0.5) == pytest.approx(0.25, abs=1e-15)
    assert cosine_drop_rate(25, 100, 0.5) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)) / 2)
    assert cosine_drop_rate(100, 100, 0.5) == pytest.approx(0.0, abs=1e-15)
    assert cosine_drop_rate(150, 100, 0.5) == pytest.approx(0.0, abs=1e-15)
    with pytest.raises(ConfigError, match="t_end"):
        cosine_drop_rate(1, 0, 0.5)


def test_dynamic_mask_update_keeps_count_and_follows_scores() -> None:
    like = _scores(0)
    mask = random_mask(like, 0.5, torch.Generator().manual_seed(0))
    death, growth = [s.abs() for s in _scores(1)], [s.abs() for s in _scores(2)]
    k = _count(mask)
    new = dynamic_mask_update(mask, death, growth, 0.3)
    r = math.floor(k * 0.3)
    assert _count(new) == k
    old_f, new_f = flat(mask), flat(new)
    assert int((old_f & ~new_f).sum()) == r and int((~old_f & new_f).sum()) == r
    survivors = old_f & new_f
    dropped = old_f & ~new_f
    assert flat(death)[survivors].min() >= flat(death)[dropped].max()
    grown = ~old_f & new_f
    not_grown = ~old_f & ~new_f
    assert flat(growth)[grown].min() >= flat(growth)[not_grown].max()


def test_sparse_sam_dynamic_drop_follows_the_cosine_schedule() -> None:
    model, (x, y) = tiny_mlp(), data()
    total = 8
    opt = SparseSAM(model.parameters(), torch.optim.SGD, rho=0.05, mask="dynamic", sparsity=0.5,
                    total_steps=total, update_interval=1, drop_rate=0.5, lr=0.05, seed=0)
    d = sum(p.numel() for p in model.parameters())
    k = num_kept(d, 0.5)
    for t in range(total + 1):
        before = [m.clone() for m in opt.masks]
        opt.step(make_closure(opt, model, x, y))
        flips = int((flat(before) ^ flat(opt.masks)).sum())
        assert flips == 2 * math.floor(k * cosine_drop_rate(t, total, 0.5) + 1e-9), t
        assert _count(opt.masks) == k


def test_sparse_sam_update_interval() -> None:
    model, (x, y) = tiny_mlp(), data()
    opt = SparseSAM(model.parameters(), torch.optim.SGD, rho=0.05, mask="dynamic", sparsity=0.5,
                    total_steps=100, update_interval=3, lr=0.05, seed=0)
    changed = []
    for _ in range(7):
        before = flat(opt.masks).clone()
        opt.step(make_closure(opt, model, x, y))
        changed.append(not torch.equal(before, flat(opt.masks)))
    assert changed == [True, False, False, True, False, False, True]


@pytest.mark.parametrize("mask", ["random", "dynamic", "fixed", "nm"])
def test_perturbation_norm_never_exceeds_rho(mask: str) -> None:
    model, (x, y) = tiny_mlp(), data()
    rho = 0.3
    kwargs: dict = {"mask": mask, "sparsity": 0.6}
    if mask == "fixed":
        kwargs["mask"] = [torch.ones_like(p) for p in model.parameters()]
    if mask == "dynamic":
        kwargs.update(total_steps=5, update_interval=1)
    for normalize_masked in (False, True):
        opt = SparseSAM(model.parameters(), torch.optim.SGD, rho=rho, lr=0.05, normalize_masked=normalize_masked,
                        **kwargs)
        if mask == "nm":
            opt.update_mask(scores=[p.detach().abs() for p in model.parameters()])
        for _ in range(3):
            w = flat(params_of(model))
            mse(model, x, y).backward()
            opt.first_step(zero_grad=True)
            eps_norm = float((flat(params_of(model)) - w).norm())
            assert eps_norm <= rho * (1 + 1e-12)
            if normalize_masked or mask == "fixed":
                assert eps_norm == pytest.approx(rho, rel=1e-9)
            else:
                assert eps_norm < rho  # the masked part of the unmasked-normalised vector
            mse(model, x, y).backward()
            opt.second_step(zero_grad=True)


def test_empirical_fisher_diagonal_is_sum_of_squared_example_gradients() -> None:
    model, (x, y) = tiny_mlp(), data(n=5)
    fisher = empirical_fisher_diagonal(model, mse, x, y)
    w = params_of(model)
    expected = [torch.zeros_like(p) for p in w]
    for i in range(5):
        gi = grad_at(model, w, x[i:i + 1], y[i:i + 1])
        expected = [e + g * g for e, g in zip(expected, gi)]
    assert torch.allclose(flat(fisher), flat(expected), rtol=1e-12, atol=0)
    assert all(p.grad is None for p in model.parameters())  # .grad untouched


def test_fisher_sparse_sam_scores_its_mask_on_first_use_then_updates_it() -> None:
    model, (x, y) = tiny_mlp(), data()
    xs, ys = x[:6], y[:6]
    opt = SparseSAM(model.parameters(), torch.optim.SGD, rho=0.1, mask="fisher", sparsity=0.75,
                    update_interval=1, score_fn=lambda: empirical_fisher_diagonal(model, mse, xs, ys),
                    lr=0.05, perturb_eps=0.0)
    assert opt.density() == 0.0 and not opt.scored and opt.first_scored_at is None
    # the same step by a Sparse SAM handed the mask of the Fisher scores at the starting weights
    twin = tiny_mlp()
    fixed = SparseSAM(twin.parameters(), torch.optim.SGD, rho=0.1, lr=0.05, perturb_eps=0.0,
                      mask=fisher_mask(empirical_fisher_diagonal(twin, mse, xs, ys), 0.75))
    opt.step(make_closure(opt, model, x, y))  # step 0 is scored first: a masked SAM step, not plain SGD
    fixed.step(make_closure(fixed, twin, x, y))
    assert opt.first_scored_at == 0 and opt.scored and opt.state_dict()["sharpscope"]["first_scored_at"] == 0
    assert torch.equal(flat(params_of(model)), flat(params_of(twin)))
    d = sum(p.numel() for p in model.parameters())
    assert opt.density() == num_kept(d, 0.75) / d
    expected_mask = fisher_mask(empirical_fisher_diagonal(model, mse, xs, ys), 0.75)
    # updated after step 0 (update_interval=1), at the weights after it; compare to the builder directly
    assert all(torch.equal(a, b) for a, b in zip(opt.masks, expected_mask))


def test_an_unscored_fisher_mask_without_score_fn_is_refused_not_silently_sgd() -> None:
    model, (x, y) = tiny_mlp(), data()
    opt = SparseSAM(model.parameters(), torch.optim.SGD, rho=0.1, mask="nm", lr=0.05)
    before = params_of(model)
    with pytest.raises(ConfigError, match="has no scores yet: its mask is all zeros") as info:
        opt.step(make_closure(opt, model, x, y))
    assert info.value.argument == "score_fn"
    assert torch.equal(flat(params_of(model)), flat(before)) and not opt.perturbed
    opt.update_mask(scores=[p.detach().abs() for p in model.parameters()])
    opt.step(make_closure(opt, model, x, y))  # scored: the step runs
    assert not torch.equal(flat(params_of(model)), flat(before))
    restored = SparseSAM(tiny_mlp().parameters(), torch.optim.SGD, rho=0.1, mask="nm", lr=0.05)
    restored.load_state_dict(opt.state_dict())
    assert restored.scored  # a resumed optimizer keeps its scored mask


@pytest.mark.parametrize("scored", [True, False])
def test_a_state_saved_without_the_scored_flag_resumes_as_with_it(scored: bool) -> None:
    """A state saved before the ``scored`` flag existed: its mask was scored iff it has a one. A scored one
    resumes bit for bit as the same state with the flag (and the uninterrupted run); an all-zero one is
    still refused at the next step, not taken as a scored mask of zeros (plain SGD)."""
    model, (x, y) = tiny_mlp(), data()

    def nm_sam(m: nn.Module) -> SparseSAM:
        return SparseSAM(m.parameters(), torch.optim.SGD, rho=0.1, mask="nm", lr=0.05, momentum=0.9)

    opt = nm_sam(model)
    if scored:
        opt.update_mask(scores=[p.detach().abs() for p in model.parameters()])
        opt.step(make_closure(opt, model, x, y))
    current = opt.state_dict()
    assert current["sharpscope"][SCORED_KEY] is scored
    old = {**current, "sharpscope": {k: v for k, v in current["sharpscope"].items() if k != SCORED_KEY}}
    resumed = []
    for state in (current, old):
        twin = copy.deepcopy(model)
        restored = nm_sam(twin)
        restored.load_state_dict(copy.deepcopy(state))  # its buffers, not the live ones
        assert restored.scored is scored
        assert all(torch.equal(a, b) for a, b in zip(restored.masks, opt.masks))
        if scored:
            restored.step(make_closure(restored, twin, x, y))
            resumed.append(flat(params_of(twin)))
        else:
            with pytest.raises(ConfigError, match="has no scores yet"):
                restored.step(make_closure(restored, twin, x, y))
    if scored:
        opt.step(make_closure(opt, model, x, y))
        assert torch.equal(resumed[0], resumed[1]) and torch.equal(resumed[1], flat(params_of(model)))


def test_nm_sparse_sam_masks_satisfy_the_pattern() -> None:
    model = nn.Sequential(nn.Linear(8, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    x, y = data(d_in=8)
    opt = SparseSAM(model.parameters(), torch.optim.SGD, rho=0.1, mask="nm", n=1, m=4, update_interval=1,
                    score_fn=lambda: empirical_fisher_diagonal(model, mse, x[:4], y[:4]), lr=0.05)
    opt.step(make_closure(opt, model, x, y))
    w1, b1, w2, b2 = opt.masks
    assert bool((w1.reshape(4, -1, 4).sum(-1) == 1).all()) and bool((w2.reshape(2, -1, 4).sum(-1) == 1).all())
    assert bool(b1.all()) and bool(b2.all())


def test_sparse_sam_configuration_errors() -> None:
    ps = list(tiny_mlp().parameters())
    with pytest.raises(ConfigError, match="total_steps"):
        SparseSAM(ps, torch.optim.SGD, mask="dynamic", update_interval=1, lr=0.1)
    with pytest.raises(ConfigError, match="update_interval is required"):
        SparseSAM(ps, torch.optim.SGD, mask="dynamic", total_steps=10, lr=0.1)
    with pytest.raises(ConfigError, match="update_interval is required"):
        SparseSAM(ps, torch.optim.SGD, mask="fisher", score_fn=lambda: ps, lr=0.1)
    with pytest.raises(ConfigError, match="update_interval must be None"):
        SparseSAM(ps, torch.optim.SGD, mask="nm", update_interval=5, lr=0.1)
    with pytest.raises(ConfigError, match="update_interval must be None"):
        SparseSAM(ps, torch.optim.SGD, mask=[torch.ones_like(p) for p in ps], update_interval=5, lr=0.1)
    with pytest.raises(ConfigError, match="mask"):
        SparseSAM(ps, torch.optim.SGD, mask="magic", lr=0.1)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="sparsity"):
        SparseSAM(ps, torch.optim.SGD, sparsity=1.2, lr=0.1)
    with pytest.raises(ConfigError, match="update_interval"):
        SparseSAM(ps, torch.optim.SGD, update_interval=0, lr=0.1)
    with pytest.raises(ConfigError, match="masks"):
        SparseSAM(ps, torch.optim.SGD, mask=[torch.ones(3)], lr=0.1)
    opt = SparseSAM(ps, torch.optim.SGD, mask="fisher", lr=0.1)
    with pytest.raises(ConfigError, match="score_fn"):
        opt.update_mask()
    with pytest.raises(ConfigError, match="binary"):
        opt.set_masks([torch.full_like(p, 0.5) for p in ps])


def test_sparse_sam_with_full_mask_equals_sam() -> None:
    (x, y) = data()
    m1, m2 = tiny_mlp(), tiny_mlp()
    o1 = SparseSAM(m1.parameters(), torch.optim.SGD, rho=0.1, mask=[torch.ones_like(p) for p in m1.parameters()],
                   lr=0.1, momentum=0.9)
    o2 = SAM(m2.parameters(), torch.optim.SGD, rho=0.1, lr=0.1, momentum=0.9)
    for _ in range(3):
        o1.step(make_closure(o1, m1, x, y))
        o2.step(make_closure(o2, m2, x, y))
    assert torch.equal(flat(params_of(m1)), flat(params_of(m2)))


def test_sparse_sam_added_param_group_is_perturbed_densely() -> None:
    model, (x, y) = tiny_mlp(), data()
    opt = SparseSAM(model.parameters(), torch.optim.SGD, rho=0.1, mask="random", sparsity=0.5, lr=0.05)
    extra = nn.Parameter(torch.ones(3, dtype=torch.float64))
    opt.add_param_group({"params": [extra]})
    assert bool(opt.masks[-1].all()) and len(opt.masks) == 5

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = mse(model, x, y) + (extra**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    assert torch.isfinite(extra).all()
