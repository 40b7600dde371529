"""RS and SA (Ahn et al.): smoothing identity (U8), exact steps, options, sampling, degenerate case."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from torch import nn

from sharpscope.errors import ConfigError
from sharpscope.optim import RS, SA, batch_scaled, sample_unit_sphere
from tests.optim.optim_helpers import data, flat, grad_at, make_closure, mse, params_of, tiny_mlp


# --------------------------------------------------------------------------- U8 smoothing identity
def test_rs_smoothing_identity_on_quartic() -> None:
    """E_u ∇f(x + ρu) − ∇f(x) = (ρ²/2)∇(tr H/d) for f = Σ a_i x_i⁴ (exact: ∇f is cubic).

    ∇f_i(x + ρu) = 4a_i(x_i + ρu_i)³ and E[u_i] = E[u_i³] = 0, E[u_i²] = 1/d give 12a_i x_i ρ²/d,
    while tr H = Σ 12 a_i x_i², so (ρ²/2)∇(tr H/d) = 12 a_i x_i ρ²/d. Directions come from RS's
    own sampler; x_i ~ ρ keeps the Monte-Carlo error (≈2/√N relative) near 1%.
    """
    d, rho, n = 3, 0.1, 40_000
    a = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    x = torch.tensor([0.05, -0.08, 0.12], dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    u = torch.stack([sample_unit_sphere([x], gen)[0] for _ in range(n)])
    assert torch.allclose(u.norm(dim=1), torch.ones(n, dtype=torch.float64), atol=1e-14)
    grad = lambda z: 4 * a * z**3  # noqa: E731
    mc = (grad(x + rho * u) - grad(x)).mean(0)
    x_req = x.clone().requires_grad_(True)
    tr_bar = (12 * a * x_req**2).sum() / d
    expected = (rho**2 / 2) * torch.autograd.grad(tr_bar, x_req)[0]
    assert torch.allclose(mc, expected, rtol=0.05, atol=0)


# --------------------------------------------------------------------------- RS exact steps
def _rs_expected(model, x, y, lr, lr_p, rho, seed, *, project=True, include=True):
    w = params_of(model)
    g = grad_at(model, w, x, y)
    u = sample_unit_sphere(w, torch.Generator().manual_seed(seed))
    wp = grad_at(model, [wi + rho * ui for wi, ui in zip(w, u)], x, y)
    gf, wf = flat(g), flat(wp)
    v = wf - (wf @ gf) / (gf @ gf) * gf if project else wf
    new = flat(w) - (lr * gf if include else 0) - lr_p * v
    return new, gf, v


@pytest.mark.parametrize(("project", "include"), [(True, True), (False, True), (True, False)])
def test_rs_perturbed_step_equals_hand_computation(project: bool, include: bool) -> None:
    model, (x, y) = tiny_mlp(), data()
    lr, lr_p, rho, seed = 0.05, 0.3, 0.2, 4
    expected, gf, v = _rs_expected(model, x, y, lr, lr_p, rho, seed, project=project, include=include)
    opt = RS(model.parameters(), lr, lr_p, rho, math.inf, project=project, include_gradient_step=include, seed=seed)
    opt.step(make_closure(opt, model, x, y))
    assert torch.allclose(flat(params_of(model)), expected, atol=1e-14, rtol=0)
    assert opt.last_step is not None and opt.last_step.perturbed
    if project:
        assert abs(float(v @ gf)) < 1e-14 * float(v.norm() * gf.norm())  # gradient component removed


def test_rs_lr_perturb_none_means_eta() -> None:
    model, (x, y) = tiny_mlp(), data()
    expected, _, _ = _rs_expected(model, x, y, 0.05, 0.05, 0.2, 0)
    opt = RS(model.parameters(), 0.05, None, 0.2, math.inf)
    opt.step(make_closure(opt, model, x, y))
    assert torch.allclose(flat(params_of(model)), expected, atol=1e-14, rtol=0)


def test_tolerance_branch_switches_between_plain_and_perturbed() -> None:
    model, (x, y) = tiny_mlp(), data()
    w = params_of(model)
    g = grad_at(model, w, x, y)
    gn = float(flat(g).norm())
    calls = []

    def counting(opt, model):
        inner = make_closure(opt, model, x, y)

        def closure():
            calls.append(1)
            return inner()
        return closure

    # ‖g‖ > ε0: plain GD step, one closure call
    opt = RS(model.parameters(), 0.1, 1.0, 0.2, gn / 2)
    opt.step(counting(opt, model))
    assert len(calls) == 1 and not opt.last_step.perturbed
    assert torch.allclose(flat(params_of(model)), flat(w) - 0.1 * flat(g), atol=1e-15, rtol=0)
    assert opt.last_step.grad_norm == pytest.approx(gn, rel=1e-12)

    # tolerance_branch=False: perturbed regardless of ε0
    m2 = tiny_mlp()
    opt2 = RS(m2.parameters(), 0.1, 1.0, 0.2, gn / 2, tolerance_branch=False)
    opt2.step(make_closure(opt2, m2, x, y))
    assert opt2.last_step.perturbed


class _IntegerQuadratic(nn.Module):
    """f(a, b) = (a² + b²)/2 at a = 3, b = 4: the gradient (3, 4) and its norm 5 are exact in
    float64 whatever order a norm is accumulated in, so ε0 = 5 is an exact tie."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor([3.0], dtype=torch.float64))
        self.b = nn.Parameter(torch.tensor([4.0], dtype=torch.float64))

    def loss(self) -> torch.Tensor:
        return (self.a.pow(2).sum() + self.b.pow(2).sum()) / 2


@pytest.mark.parametrize(("inclusive", "perturbed"), [(True, True), (False, False)])
def test_tolerance_inequality_convention(inclusive: bool, perturbed: bool) -> None:
    """At ‖∇f‖ = ε0 exactly, ``inclusive=True`` perturbs (‖g‖ ≤ ε0) and ``False`` does not (‖g‖ < ε0)."""
    model = _IntegerQuadratic()
    opt = RS(model.parameters(), 0.1, 1.0, 0.2, 5.0, inclusive=inclusive)

    def closure():
        opt.zero_grad()
        loss = model.loss()
        loss.backward()
        return loss

    opt.step(closure)
    assert opt.last_step.grad_norm == 5.0  # the tie is exact, not approximate
    assert opt.last_step.perturbed is perturbed


def test_tolerance_convention_away_from_the_tie() -> None:
    """Either convention agrees off the tie: ε0 a relative 1e-9 above ‖g‖ perturbs, below does not."""
    for inclusive in (True, False):
        for eps0, perturbed in ((5.0 * (1 + 1e-9), True), (5.0 * (1 - 1e-9), False)):
            model = _IntegerQuadratic()
            opt = RS(model.parameters(), 0.1, 1.0, 0.2, eps0, inclusive=inclusive)

            def closure(opt=opt, model=model):
                opt.zero_grad()
                loss = model.loss()
                loss.backward()
                return loss

            opt.step(closure)
            assert opt.last_step.perturbed is perturbed


# --------------------------------------------------------------------------- SA
class PerExample(nn.Module):
    """f_i(w) = (⟨w, z_i⟩ − t_i)² + ⟨w, w⟩²/4 — a few examples with non-trivial third derivative."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64))
        self.z = torch.tensor([[1.0, 0.0, 2.0], [0.5, -1.0, 0.0], [0.0, 1.5, -0.5]], dtype=torch.float64)
        self.t = torch.tensor([0.2, -0.4, 0.9], dtype=torch.float64)

    def losses(self, w: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return (self.z[idx] @ w - self.t[idx]) ** 2 + (w @ w) ** 2 / 4


def _sa_closures(opt, model):
    all_idx = torch.arange(3)
    seen: list[tuple[int, ...]] = []

    def closure():
        opt.zero_grad()
        loss = model.losses(model.w, all_idx).mean()
        loss.backward()
        return loss.detach()

    def example_closure(idx):
        seen.append(tuple(int(i) for i in idx))
        opt.zero_grad()
        loss = model.losses(model.w, idx).mean()
        loss.backward()
        return loss.detach()

    return closure, example_closure, seen


def _grad(model, w, idx):
    w = w.detach().clone().requires_grad_(True)
    return torch.autograd.grad(model.losses(w, idx).mean(), w)[0]


def test_sa_b1_draws_one_example_and_its_update_removes_the_gradient_component() -> None:
    model = PerExample()
    x0 = model.w.detach().clone()
    rho = 0.1
    g = _grad(model, x0, torch.arange(3))
    outcomes = {}
    for i in range(3):
        gi = _grad(model, x0, torch.tensor([i]))
        u = gi / gi.norm()
        for s in (1, -1):
            wv = _grad(model, x0 + s * rho * u, torch.tensor([i]))
            outcomes[(i, s)] = wv - (wv @ g) / (g @ g) * g
    opt = SA([model.w], 0.0, 1.0, rho, math.inf, num_examples=3, batch_size=1, seed=0)
    closure, example_closure, seen = _sa_closures(opt, model)
    counts: Counter = Counter()
    vs = []
    for _ in range(300):
        with torch.no_grad():
            model.w.copy_(x0)
        n_before = len(seen)
        opt.set_example_closure(example_closure)
        opt.step(closure)
        assert len(seen) - n_before == 2 and len(seen[-1]) == 1 and seen[-1] == seen[-2]  # one example
        rec = opt.last_step
        v = -(model.w.detach() - x0)  # lr = 0, lr_perturb = 1: Δx = −v
        assert torch.allclose(v, outcomes[(rec.indices[0], rec.sign)], atol=1e-15, rtol=0)
        assert abs(float(v @ g)) < 1e-14
        counts[(rec.indices[0], rec.sign)] += 1
        vs.append(v)
    assert set(counts) == set(outcomes) and min(counts.values()) >= 25  # uniform over (i, σ): 50 each
    # expected update direction E[v] = (1/2n) Σ_{i,σ} Proj⊥ ∇f_i(x + ρσu_i): orthogonal to ∇f, and
    # without the projection it would not be (so the check can fail)
    exact_mean = torch.stack(list(outcomes.values())).mean(0)
    assert abs(float(exact_mean @ g)) < 1e-14
    assert abs(float(torch.stack(vs).mean(0) @ g)) < 1e-14
    raw_mean = torch.stack([_grad(model, x0 + s * rho * _grad(model, x0, torch.tensor([i]))
                                  / _grad(model, x0, torch.tensor([i])).norm(), torch.tensor([i]))
                            for i in range(3) for s in (1, -1)]).mean(0)
    assert abs(float(raw_mean @ g)) > 1e-3


def test_sa_batch_size_and_step_equal_hand_computation() -> None:
    model, (x, y) = tiny_mlp(), data(n=12)
    lr, lr_p, rho, seed, b = 0.05, 0.2, 0.1, 3, 4
    w = params_of(model)
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(12, generator=gen)[:b]
    sign = 1 if int(torch.randint(0, 2, (1,), generator=gen)) == 1 else -1
    g = flat(grad_at(model, w, x, y))
    gi = grad_at(model, w, x[idx], y[idx])
    ni = flat(gi).norm()
    wp = flat(grad_at(model, [a + sign * rho * c / ni for a, c in zip(w, gi)], x[idx], y[idx]))
    v = wp - (wp @ g) / (g @ g) * g
    expected = flat(w) - lr * g - lr_p * v

    opt = SA(model.parameters(), lr, lr_p, rho, math.inf, num_examples=12, batch_size=b, seed=seed)
    got: list[torch.Tensor] = []

    def example_closure(ix):
        got.append(ix.clone())
        opt.zero_grad()
        loss = mse(model, x[ix], y[ix])
        loss.backward()
        return loss
    opt.set_example_closure(example_closure)
    opt.step(make_closure(opt, model, x, y))
    assert all(len(set(t.tolist())) == b for t in got)  # B distinct examples
    assert torch.equal(got[0], idx) and opt.last_step.sign == sign
    assert torch.allclose(flat(params_of(model)), expected, atol=1e-14, rtol=0)


def test_sa_degenerate_zero_example_gradient_uses_a_tiny_random_shift() -> None:
    # example 0 is fitted exactly with zero gradient: f_0(w) = (⟨w, z⟩ − t)² with ⟨w, z⟩ = t
    w0 = torch.tensor([1.0, 2.0], dtype=torch.float64)
    z = torch.tensor([[1.0, 1.0], [2.0, -1.0]], dtype=torch.float64)
    t = torch.tensor([3.0, 1.0], dtype=torch.float64)
    w = nn.Parameter(w0.clone())
    f = lambda ww, idx: ((z[idx] @ ww - t[idx]) ** 2).mean()  # noqa: E731
    rho, xi_norm = 0.1, 1e-3
    opt = SA([w], 0.0, 1.0, rho, math.inf, num_examples=1, batch_size=1, xi_norm=xi_norm, seed=5, project=False)

    def closure():
        opt.zero_grad()
        loss = f(w, torch.arange(2))
        loss.backward()
        return loss

    def example_closure(idx):
        opt.zero_grad()
        loss = f(w, idx)
        loss.backward()
        return loss
    opt.set_example_closure(example_closure)
    opt.step(closure)
    assert opt.last_step.degenerate and opt.last_step.indices == (0,)
    # hand computation replaying the generator: indices, sign, then ξ
    gen = torch.Generator().manual_seed(5)
    torch.randperm(1, generator=gen)
    sign = 1 if int(torch.randint(0, 2, (1,), generator=gen)) == 1 else -1
    xi = sample_unit_sphere([w0], gen)[0] * xi_norm
    gx = torch.func.grad(lambda ww: f(ww, torch.tensor([0])))(w0 + xi)
    u = gx / gx.norm()
    v = torch.func.grad(lambda ww: f(ww, torch.tensor([0])))(w0 + sign * rho * u)
    assert torch.allclose(w.detach(), w0 - v, atol=1e-14, rtol=0)
    assert torch.isfinite(w).all()


def test_sa_plain_branch_does_not_sample() -> None:
    model = PerExample()
    opt = SA([model.w], 0.1, 1.0, 0.1, 0.0, num_examples=3, inclusive=False)  # ‖g‖ < 0 never holds
    closure, example_closure, seen = _sa_closures(opt, model)
    state = opt.generator.get_state()
    opt.set_example_closure(example_closure)
    opt.step(closure)
    assert seen == [] and not opt.last_step.perturbed
    assert torch.equal(opt.generator.get_state(), state)


def test_rs_sa_validation_errors() -> None:
    ps = list(tiny_mlp().parameters())
    with pytest.raises(ConfigError, match="lr"):
        RS(ps, -0.1, None, 0.1, 1.0)
    with pytest.raises(ConfigError, match="rho"):
        RS(ps, 0.1, None, -0.1, 1.0)
    with pytest.raises(ConfigError, match="eps0"):
        RS(ps, 0.1, None, 0.1, float("nan"))
    with pytest.raises(ConfigError, match="project"):
        RS(ps, 0.1, None, 0.1, 1.0, project=None)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="batch_size"):
        SA(ps, 0.1, None, 0.1, 1.0, num_examples=4, batch_size=5)
    with pytest.raises(ConfigError, match="generator"):
        RS(ps, 0.1, None, 0.1, 1.0, generator=3)  # type: ignore[arg-type]
    opt = SA(ps, 0.1, None, 0.1, 1.0, num_examples=4)
    with pytest.raises(ConfigError, match="example_closure"):
        opt.step(lambda: None)
    with pytest.raises(ConfigError, match="closure"):
        RS(ps, 0.1, None, 0.1, 1.0).step()


def test_rs_never_touches_the_global_rng() -> None:
    model, (x, y) = tiny_mlp(), data()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    opt = RS(model.parameters(), 0.1, None, 0.1, math.inf, seed=0)
    for _ in range(3):
        opt.step(make_closure(opt, model, x, y))
    assert torch.equal(torch.get_rng_state(), before)


# --------------------------------------------------------------------------- readings left open
def _sa_hand(model, x, y, idx, sign, lr, lr_p, rho, *, difference):
    """x − η g − η′ Proj⊥_g(∇f_I(x + ρσu) − [difference]·∇f_I(x)), u = ∇f_I(x)/‖∇f_I(x)‖, in float64."""
    w = params_of(model)
    g = flat(grad_at(model, w, x, y))
    gi = grad_at(model, w, x[idx], y[idx])
    ni = flat(gi).norm()
    wp = flat(grad_at(model, [a + sign * rho * c / ni for a, c in zip(w, gi)], x[idx], y[idx]))
    if difference:
        wp = wp - flat(gi)
    v = wp - (wp @ g) / (g @ g) * g
    return flat(w) - lr * g - lr_p * v


@pytest.mark.parametrize("difference", [False, True])
def test_sa_same_batch_equals_hand_computation(difference: bool) -> None:
    """perturbation_batch="same": I is the closure's batch, u = σ ∇f(x)/‖∇f(x)‖; the difference
    form changes nothing (∇f_I(x) = ∇f(x) is projected out)."""
    model, (x, y) = tiny_mlp(), data(n=12)
    lr, lr_p, rho, seed = 0.05, 0.2, 0.1, 3
    gen = torch.Generator().manual_seed(seed)
    sign = 1 if int(torch.randint(0, 2, (1,), generator=gen)) == 1 else -1
    expected = _sa_hand(model, x, y, torch.arange(12), sign, lr, lr_p, rho, difference=False)
    opt = SA(model.parameters(), lr, lr_p, rho, math.inf, perturbation_batch="same", difference=difference,
             seed=seed)
    opt.step(make_closure(opt, model, x, y))
    assert opt.last_step.sign == sign and opt.last_step.indices is None
    assert torch.allclose(flat(params_of(model)), expected, atol=1e-14, rtol=0)


def test_sa_difference_form_equals_hand_computation() -> None:
    """Independent batch with ``difference=True``: v = Proj⊥(∇f_I(x + ρσu) − ∇f_I(x)), which differs
    from the plain form by η′·Proj⊥ ∇f_I(x) (so the check can fail)."""
    model, (x, y) = tiny_mlp(), data(n=12)
    lr, lr_p, rho, seed, b = 0.05, 0.2, 0.1, 3, 4
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(12, generator=gen)[:b]
    sign = 1 if int(torch.randint(0, 2, (1,), generator=gen)) == 1 else -1
    expected = _sa_hand(model, x, y, idx, sign, lr, lr_p, rho, difference=True)
    plain = _sa_hand(model, x, y, idx, sign, lr, lr_p, rho, difference=False)
    assert float((expected - plain).norm()) > 1e-4

    def example_closure(ix):
        opt.zero_grad()
        loss = mse(model, x[ix], y[ix])
        loss.backward()
        return loss

    opt = SA(model.parameters(), lr, lr_p, rho, math.inf, num_examples=12, batch_size=b, difference=True,
             seed=seed, example_closure=example_closure)
    opt.step(make_closure(opt, model, x, y))
    assert torch.equal(torch.tensor(opt.last_step.indices), idx)
    assert torch.allclose(flat(params_of(model)), expected, atol=1e-14, rtol=0)


def test_rs_independent_batch_difference_equals_hand_computation() -> None:
    """RS with its own perturbation batch J: w = ∇f_J(x + ρu) − ∇f_J(x), indices drawn before u."""
    model, (x, y) = tiny_mlp(), data(n=12)
    lr, lr_p, rho, seed, b = 0.05, 0.3, 0.2, 4, 5
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(12, generator=gen)[:b]
    w = params_of(model)
    u = sample_unit_sphere(w, gen)
    g = flat(grad_at(model, w, x, y))
    wp = flat(grad_at(model, [a + rho * c for a, c in zip(w, u)], x[idx], y[idx])) - flat(grad_at(model, w, x[idx],
                                                                                                  y[idx]))
    v = wp - (wp @ g) / (g @ g) * g
    expected = flat(w) - lr * g - lr_p * v

    def example_closure(ix):
        opt.zero_grad()
        loss = mse(model, x[ix], y[ix])
        loss.backward()
        return loss

    opt = RS(model.parameters(), lr, lr_p, rho, math.inf, perturbation_batch="independent", num_examples=12,
             batch_size=b, difference=True, seed=seed, example_closure=example_closure)
    opt.step(make_closure(opt, model, x, y))
    assert torch.allclose(flat(params_of(model)), expected, atol=1e-14, rtol=0)


@pytest.mark.parametrize(("rule", "rho_f", "lr_f"), [("none", 1.0, 1.0), ("rho", 0.5, 1.0), ("rho+lr", 0.5, 0.5)])
def test_batch_scaling_rule(rule: str, rho_f: float, lr_f: float) -> None:
    """ρ_B = ρ√(B/B_ref) (and η′ with "rho+lr"): B = 32 against B_ref = 128 halves them; the scaled
    step equals an unscaled optimizer given the scaled ρ and η′."""
    assert batch_scaled(0.08, 0.4, 32, 128, rule) == pytest.approx((0.08 * rho_f, 0.4 * lr_f), rel=1e-15)
    assert batch_scaled(0.08, 0.4, 1, 1, rule) == (0.08, 0.4)
    out = []
    for scaled in (True, False):
        model, (x, y) = tiny_mlp(), data(n=12)
        kw = ({"batch_scaling": rule, "reference_batch": 48} if scaled else {})
        rho, lr_p = (0.2, 0.4) if scaled else (0.2 * rho_f, 0.4 * lr_f)
        opt = RS(model.parameters(), 0.05, lr_p, rho, math.inf, batch_size=12, seed=1, **kw)
        opt.step(make_closure(opt, model, x, y))
        out.append(flat(params_of(model)))
        if scaled:
            assert opt.last_step.rho == pytest.approx(0.2 * rho_f) and opt.last_step.lr_perturb == pytest.approx(
                0.4 * lr_f)
    assert torch.allclose(out[0], out[1], atol=1e-15, rtol=0)
    with pytest.raises(ConfigError, match="batch_scaling"):
        batch_scaled(0.1, 0.1, 4, 128, "linear")
    with pytest.raises(ConfigError, match="batch_size"):
        RS(tiny_mlp().parameters(), 0.1, None, 0.1, 1.0, batch_scaling="rho")
