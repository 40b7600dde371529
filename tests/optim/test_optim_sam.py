"""SAM / ASAM / SparseSAM-with-fixed-mask: one step against hand computations (float64), the
protocol, m-sharpness, weight decay, GradScaler, clipping, non-finite gradients, validation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sharpscope.errors import ConfigError, SharpscopeError
from sharpscope.optim import SAM, SparseSAM, asam_param_groups
from tests.optim.optim_helpers import data, flat, grad_at, make_closure, mse, params_of, tiny_mlp

LR, RHO = 0.1, 0.07


def _sam_step(opt: torch.optim.Optimizer, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    opt.step(make_closure(opt, model, x, y))
    return params_of(model)


def _assert_close(actual: list[torch.Tensor], expected: list[torch.Tensor], tol: float = 1e-12) -> None:
    assert torch.allclose(flat(actual), flat(expected), rtol=0, atol=tol), \
        (flat(actual) - flat(expected)).abs().max()


# --------------------------------------------------------------------------- hand computations
def test_sam_p2_step_equals_hand_computation() -> None:
    model, (x, y) = tiny_mlp(), data()
    w = params_of(model)
    g = grad_at(model, w, x, y)
    gn = flat(g).norm()
    g2 = grad_at(model, [wi + RHO * gi / gn for wi, gi in zip(w, g)], x, y)
    expected = [wi - LR * gi for wi, gi in zip(w, g2)]
    opt = SAM(model.parameters(), torch.optim.SGD, rho=RHO, lr=LR, perturb_eps=0.0)
    _assert_close(_sam_step(opt, model, x, y), expected)
    assert opt.last_grad_norm == pytest.approx(float(gn), rel=1e-12)
    # the SAM step differs from the plain SGD step (the test can fail)
    plain = [wi - LR * gi for wi, gi in zip(w, g)]
    assert (flat(expected) - flat(plain)).abs().max() > 1e-4


def test_sam_pinf_step_equals_hand_computation() -> None:
    model, (x, y) = tiny_mlp(), data()
    w = params_of(model)
    g = grad_at(model, w, x, y)
    g2 = grad_at(model, [wi + RHO * torch.sign(gi) for wi, gi in zip(w, g)], x, y)
    expected = [wi - LR * gi for wi, gi in zip(w, g2)]
    opt = SAM(model.parameters(), torch.optim.SGD, rho=RHO, p=math.inf, lr=LR)
    _assert_close(_sam_step(opt, model, x, y), expected)


def test_sam_general_p_is_the_dual_norm_solution() -> None:
    model, (x, y) = tiny_mlp(), data()
    w = params_of(model)
    g = grad_at(model, w, x, y)
    p, q = 3.0, 1.5
    denom = flat(g).abs().pow(q).sum().pow(1 / q) ** (q - 1)
    eps = [RHO * torch.sign(gi) * gi.abs().pow(q - 1) / denom for gi in g]
    assert float(flat(eps).abs().pow(p).sum() ** (1 / p)) == pytest.approx(RHO, rel=1e-12)  # ‖ε‖_p = ρ
    # ⟨g, ε⟩ = ρ‖g‖_q (Hölder equality: ε is the maximiser)
    assert float(flat(g) @ flat(eps)) == pytest.approx(RHO * float(flat(g).abs().pow(q).sum() ** (1 / q)), rel=1e-12)
    g2 = grad_at(model, [wi + e for wi, e in zip(w, eps)], x, y)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=RHO, p=p, lr=LR, perturb_eps=0.0)
    _assert_close(_sam_step(opt, model, x, y), [wi - LR * gi for wi, gi in zip(w, g2)])


@pytest.mark.parametrize("eta", [0.0, 0.01])
def test_asam_step_equals_hand_computation(eta: float) -> None:
    model, (x, y) = tiny_mlp(), data()
    w = params_of(model)
    g = grad_at(model, w, x, y)
    t = [wi.abs() + eta for wi in w]
    norm = flat([ti * gi for ti, gi in zip(t, g)]).norm()
    eps = [RHO * ti * ti * gi / norm for ti, gi in zip(t, g)]
    g2 = grad_at(model, [wi + e for wi, e in zip(w, eps)], x, y)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=RHO, adaptive=True, eta=eta, lr=LR, perturb_eps=0.0)
    _assert_close(_sam_step(opt, model, x, y), [wi - LR * gi for wi, gi in zip(w, g2)])


def test_asam_param_groups_normalise_weights_only() -> None:
    model, (x, y) = tiny_mlp(), data()
    w = params_of(model)
    names = [n for n, _ in model.named_parameters()]
    g = grad_at(model, w, x, y)
    t = [wi.abs() + 0.01 if "weight" in n else torch.ones_like(wi) for n, wi in zip(names, w)]
    norm = flat([ti * gi for ti, gi in zip(t, g)]).norm()
    eps = [RHO * ti * ti * gi / norm for ti, gi in zip(t, g)]
    g2 = grad_at(model, [wi + e for wi, e in zip(w, eps)], x, y)
    groups = asam_param_groups(model)
    assert [len(gr["params"]) for gr in groups] == [2, 2]
    opt = SAM(groups, torch.optim.SGD, rho=RHO, lr=LR, perturb_eps=0.0)
    new = _sam_step(opt, model, x, y)
    # asam_param_groups orders weights first; compare parameter by parameter via identity
    order = {id(p): i for i, p in enumerate(model.parameters())}
    assert sorted(order.values()) == [0, 1, 2, 3]
    _assert_close(new, [wi - LR * gi for wi, gi in zip(w, g2)])


def test_sparse_sam_fixed_mask_step_equals_hand_computation() -> None:
    model, (x, y) = tiny_mlp(), data()
    w = params_of(model)
    gen = torch.Generator().manual_seed(5)
    masks = [torch.rand(wi.shape, generator=gen) < 0.5 for wi in w]
    g = grad_at(model, w, x, y)
    gn = flat(g).norm()  # official normaliser: the unmasked gradient
    g2 = grad_at(model, [wi + RHO * gi * mi / gn for wi, gi, mi in zip(w, g, masks)], x, y)
    opt = SparseSAM(model.parameters(), torch.optim.SGD, rho=RHO, mask=masks, lr=LR, perturb_eps=0.0)
    _assert_close(_sam_step(opt, model, x, y), [wi - LR * gi for wi, gi in zip(w, g2)])

    # option left open by the paper: normalise the masked vector instead
    model2 = tiny_mlp()
    gm = flat([gi * mi for gi, mi in zip(g, masks)]).norm()
    g3 = grad_at(model2, [wi + RHO * gi * mi / gm for wi, gi, mi in zip(w, g, masks)], x, y)
    opt2 = SparseSAM(model2.parameters(), torch.optim.SGD, rho=RHO, mask=masks, normalize_masked=True,
                     lr=LR, perturb_eps=0.0)
    _assert_close(_sam_step(opt2, model2, x, y), [wi - LR * gi for wi, gi in zip(w, g3)])


@pytest.mark.parametrize("inside", [True, False])
def test_weight_decay_inside_or_outside_the_ascent(inside: bool) -> None:
    wd = 0.3
    model, (x, y) = tiny_mlp(), data()
    w = params_of(model)
    g = grad_at(model, w, x, y)
    h = [gi + wd * wi for gi, wi in zip(g, w)] if inside else g
    hn = flat(h).norm()
    g2 = grad_at(model, [wi + RHO * hi / hn for wi, hi in zip(w, h)], x, y)
    expected = [wi - LR * (gi + wd * wi) for wi, gi in zip(w, g2)]  # descent decay: base SGD's
    opt = SAM(model.parameters(), torch.optim.SGD, rho=RHO, lr=LR, weight_decay=wd,
              wd_in_perturbation=inside, perturb_eps=0.0)
    _assert_close(_sam_step(opt, model, x, y), expected)


def test_explicit_two_step_protocol_equals_closure_step() -> None:
    (x, y) = data()
    m1, m2 = tiny_mlp(), tiny_mlp()
    o1 = SAM(m1.parameters(), torch.optim.SGD, rho=RHO, lr=LR, momentum=0.9)
    o2 = SAM(m2.parameters(), torch.optim.SGD, rho=RHO, lr=LR, momentum=0.9)
    for _ in range(3):
        o1.step(make_closure(o1, m1, x, y))
        mse(m2, x, y).backward()
        o2.first_step(zero_grad=True)
        assert o2.perturbed
        mse(m2, x, y).backward()
        o2.second_step(zero_grad=True)
        assert not o2.perturbed
    assert torch.equal(flat(params_of(m1)), flat(params_of(m2)))


def test_rho_zero_is_the_base_optimizer() -> None:
    model, (x, y) = tiny_mlp(), data()
    w = params_of(model)
    g = grad_at(model, w, x, y)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.0, lr=LR)
    _assert_close(_sam_step(opt, model, x, y), [wi - LR * gi for wi, gi in zip(w, g)], tol=1e-15)
    assert opt.last_perturbation_skipped


# --------------------------------------------------------------------------- m-sharpness
def _msharp_expected(model: nn.Module, x: torch.Tensor, y: torch.Tensor, m: int) -> list[torch.Tensor]:
    w = params_of(model)
    n = x.shape[0]
    total = [torch.zeros_like(wi) for wi in w]
    for xk, yk in zip(x.split(m), y.split(m)):
        gk = grad_at(model, w, xk, yk)
        gn = flat(gk).norm()
        g2 = grad_at(model, [wi + RHO * gi / gn for wi, gi in zip(w, gk)], xk, yk)
        total = [t + (xk.shape[0] / n) * gi for t, gi in zip(total, g2)]
    return [wi - LR * t for wi, t in zip(w, total)]


def test_m_sharpness_averages_per_group_sam_gradients() -> None:
    model, (x, y) = tiny_mlp(), data(n=10)
    expected = _msharp_expected(model, x, y, m=4)  # groups of 4, 4, 2 (weights .4, .4, .2)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=RHO, lr=LR, perturb_eps=0.0)
    loss = opt.m_sharpness_step(model, mse, x, y, m=4)
    _assert_close(params_of(model), expected)
    w_loss = sum(float(mse(tiny_mlp(), xk, yk).detach()) * (xk.shape[0] / 10) for xk, yk in zip(x.split(4), y.split(4)))
    assert float(loss) == pytest.approx(float(w_loss), rel=1e-12)
    # differs from whole-batch SAM
    whole = _msharp_expected(tiny_mlp(), x, y, m=10)
    assert (flat(expected) - flat(whole)).abs().max() > 1e-5


def test_m_sharpness_with_m_at_least_n_is_plain_sam() -> None:
    (x, y) = data(n=6)
    m1, m2 = tiny_mlp(), tiny_mlp()
    o1 = SAM(m1.parameters(), torch.optim.SGD, rho=RHO, lr=LR, momentum=0.5)
    o2 = SAM(m2.parameters(), torch.optim.SGD, rho=RHO, lr=LR, momentum=0.5)
    o1.m_sharpness_step(m1, mse, x, y, m=100)
    o2.step(make_closure(o2, m2, x, y))
    _assert_close(params_of(m1), params_of(m2), tol=1e-15)


# --------------------------------------------------------------------------- clipping, scaler, inf
def test_gradient_clipping_between_backward_and_second_step() -> None:
    model, (x, y) = tiny_mlp(), data()
    w = params_of(model)
    g = grad_at(model, w, x, y)
    gn = flat(g).norm()
    g2 = grad_at(model, [wi + RHO * gi / gn for wi, gi in zip(w, g)], x, y)
    max_norm = 0.05
    scale = min(1.0, max_norm / (float(flat(g2).norm()) + 1e-6))
    assert scale < 0.5  # clipping is active
    opt = SAM(model.parameters(), torch.optim.SGD, rho=RHO, lr=LR, perturb_eps=0.0)
    mse(model, x, y).backward()
    opt.first_step(zero_grad=True)
    mse(model, x, y).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    opt.second_step(zero_grad=True)
    _assert_close(params_of(model), [wi - LR * scale * gi for wi, gi in zip(w, g2)])


def _scaled_run(use_scaler: bool, clip: float | None) -> torch.Tensor:
    model, (x, y) = tiny_mlp(), data()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12) if use_scaler else None
    opt = SAM(model.parameters(), torch.optim.SGD, rho=RHO, lr=LR, momentum=0.9, weight_decay=0.2,
              wd_in_perturbation=True, scaler=scaler)
    for _ in range(3):
        opt.zero_grad()
        loss = mse(model, x, y)
        (scaler.scale(loss) if scaler else loss).backward()
        opt.first_step(zero_grad=True)
        loss = mse(model, x, y)
        (scaler.scale(loss) if scaler else loss).backward()
        if clip is not None:
            if scaler:
                scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.second_step(zero_grad=True)
        if scaler:
            scaler.update()
    return flat(params_of(model))


@pytest.mark.parametrize("clip", [None, 0.05])
def test_grad_scaler_matches_unscaled_run(clip: float | None) -> None:
    # wd_in_perturbation makes the ascent depend on the unscaling being right: g/S + wd·w
    ref = _scaled_run(False, clip)
    out = _scaled_run(True, clip)
    assert torch.allclose(out, ref, rtol=0, atol=1e-14)


def test_scaler_step_on_sam_is_refused_with_advice() -> None:
    model, (x, y) = tiny_mlp(), data()
    scaler = torch.amp.GradScaler("cpu")
    opt = SAM(model.parameters(), torch.optim.SGD, rho=RHO, lr=LR, scaler=scaler)
    scaler.scale(mse(model, x, y)).backward()
    opt.first_step(zero_grad=True)
    scaler.scale(mse(model, x, y)).backward()
    with pytest.raises(ConfigError, match="second_step"):
        scaler.step(opt)


def test_non_finite_first_pass_gives_no_perturbation() -> None:
    model, (x, y) = tiny_mlp(), data()
    w = params_of(model)
    g = grad_at(model, w, x, y)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=RHO, lr=LR)
    mse(model, x, y).backward()
    next(iter(model.parameters())).grad[0, 0] = float("inf")
    opt.first_step(zero_grad=True)
    assert opt.last_perturbation_skipped
    assert torch.equal(flat(params_of(model)), flat(w))  # weights untouched
    mse(model, x, y).backward()
    opt.second_step()
    _assert_close(params_of(model), [wi - LR * gi for wi, gi in zip(w, g)])


# --------------------------------------------------------------------------- protocol errors
def test_step_without_closure_raises_config_error() -> None:
    opt = SAM(tiny_mlp().parameters(), torch.optim.SGD, lr=LR)
    with pytest.raises(ConfigError, match="closure"):
        opt.step()
    with pytest.raises(ConfigError, match="callable"):
        opt.step(3)  # type: ignore[arg-type]


def test_protocol_order_is_enforced() -> None:
    model, (x, y) = tiny_mlp(), data()
    opt = SAM(model.parameters(), torch.optim.SGD, lr=LR)
    with pytest.raises(SharpscopeError, match="first_step"):
        opt.second_step()
    mse(model, x, y).backward()
    opt.first_step()
    with pytest.raises(SharpscopeError, match="twice"):
        opt.first_step()
    with pytest.raises(SharpscopeError, match="perturbed"):
        opt.state_dict()
    opt.second_step()
    opt.state_dict()


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"rho": -0.1}, "rho"),
        ({"rho": float("nan")}, "rho"),
        ({"p": 1.0}, "p"),
        ({"p": "inf"}, "p"),
        ({"eta": -1.0}, "eta"),
        ({"perturb_eps": -1.0}, "perturb_eps"),
        ({"adaptive": 1}, "adaptive"),
        ({"wd_in_perturbation": "yes"}, "wd_in_perturbation"),
    ],
)
def test_bad_hyper_parameters_raise_config_error_naming_them(kwargs: dict, name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        SAM(tiny_mlp().parameters(), torch.optim.SGD, lr=LR, **kwargs)


def test_base_optimizer_must_be_a_class() -> None:
    model = tiny_mlp()
    with pytest.raises(ConfigError, match="base_optimizer"):
        SAM(model.parameters(), torch.optim.SGD(model.parameters(), lr=0.1))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="base_optimizer"):
        SAM(model.parameters(), SAM, lr=0.1)


def test_sam_keys_never_collide_with_base_keys() -> None:
    # Adadelta has its own ``rho``; SAM's lives under ``sam_rho``
    opt = SAM(tiny_mlp().parameters(), torch.optim.Adadelta, rho=0.05, lr=1.0)
    assert opt.param_groups[0]["rho"] == 0.9 and opt.param_groups[0]["sam_rho"] == 0.05
    opt.rho = 0.2
    assert opt.rho == 0.2 and opt.param_groups[0]["rho"] == 0.9


def test_param_groups_are_shared_with_base_and_schedulable() -> None:
    model, (x, y) = tiny_mlp(), data()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=RHO, lr=LR)
    assert opt.param_groups is opt.base_optimizer.param_groups
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    opt.step(make_closure(opt, model, x, y))
    sched.step()
    assert opt.base_optimizer.param_groups[0]["lr"] == pytest.approx(LR / 2)
    extra = nn.Parameter(torch.zeros(3, dtype=torch.float64))
    opt.add_param_group({"params": [extra], "lr": 0.0})
    assert opt.base_optimizer.param_groups[-1]["sam_rho"] == RHO
    assert len(opt.param_groups) == 2


@pytest.mark.parametrize("form", ["closure", "m_sharpness"])
def test_grad_scaler_in_closure_and_m_sharpness_forms(form: str) -> None:
    def run(use_scaler: bool) -> torch.Tensor:
        model, (x, y) = tiny_mlp(), data(n=10)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10) if use_scaler else None
        opt = SAM(model.parameters(), torch.optim.SGD, rho=RHO, lr=LR, weight_decay=0.1, wd_in_perturbation=True,
                  scaler=scaler)

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = mse(model, x, y)
            (scaler.scale(loss) if scaler else loss).backward()
            return loss

        for _ in range(2):
            if form == "closure":
                opt.step(closure)
            else:
                opt.m_sharpness_step(model, mse, x, y, m=4)
            if scaler:
                scaler.update()
        return flat(params_of(model))

    assert torch.allclose(run(True), run(False), rtol=0, atol=1e-14)
