"""The curvature along the update, ``κ_u = uᵀHu/‖u‖²`` with ``u = θ_{t+1} − θ_t``, against closed forms.

* hvp: on a quadratic ``L(w) = ½ wᵀAw`` equal to ``uᵀAu/‖u‖²``; on a tanh network equal to the same quotient
  of the dense float64 Hessian at ``θ_t`` (not at ``θ_{t+1}``).
* fd: ``D = L(θ+u) − 2L(θ) + L(θ−u)`` equals ``uᵀAu`` on a quadratic up to the rounding bound derived
  below; on a quartic it exceeds ``uᵀH(θ_t)u`` by exactly ``(1/12)∇⁴L[u,u,u,u]``.
* Adam: ``uᵀHu/uᵀPu`` with ``P = diag(√v̂ + ε)`` rebuilt from the optimizer's state by hand.
* runner: records every ``update_every`` steps, and a run killed mid-step resumes to the same records.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from sharpscope_cli.main import app
from torch import Tensor, nn
from torch.func import functional_call
from typer.testing import CliRunner

from sharpscope.curvature.settings import RUN_DEFAULTS, CurvatureSettings
from sharpscope.errors import ConfigError
from sharpscope.io.jsonsafe import without_timings
from sharpscope.io.records import RunRecord, UpdateReading
from sharpscope.losses import mse
from sharpscope.track import RunDirectory, SharpnessTracker, TrainConfig, train
from sharpscope.track import runner as runner_module

pytestmark = pytest.mark.usefixtures("single_thread")

EPS64 = torch.finfo(torch.float64).eps


def designed_quadratic(d: int = 6) -> tuple[nn.Module, tuple[Tensor, Tensor], Tensor]:
    """A linear model whose mean ``mse`` over ``(x, 0)`` is ``½ wᵀAw`` with ``A = XᵀX/N`` (returned)."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2 * d, d, generator=gen, dtype=torch.float64)
    model = nn.Linear(d, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(1, d, generator=gen, dtype=torch.float64))
    return model, (x, torch.zeros(2 * d, 1, dtype=torch.float64)), x.T @ x / x.shape[0]


def tracker_for(data: Any, method: str, loss: Any = mse, **kw: Any) -> tuple[SharpnessTracker, list[RunRecord]]:
    records: list[RunRecord] = []
    tracker = SharpnessTracker(data, loss, every=1000, curvature=CurvatureSettings(k=1, hvp_mode="rev-rev"),
                               update_curvature=method, sink=records.append, **kw)
    return tracker, records


def take_step(model: nn.Module, opt: torch.optim.Optimizer, data: tuple[Tensor, Tensor], loss: Any = mse) -> None:
    opt.zero_grad()
    loss(model(data[0]), data[1]).backward()
    opt.step()


def flat(model: nn.Module) -> Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()


def dense_hessian(model: nn.Module, data: tuple[Tensor, Tensor], theta: Tensor, loss: Any = mse) -> Tensor:
    """∇²L at the flat point ``theta`` by ``torch.autograd.functional.hessian`` (float64)."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]

    def f(vec: Tensor) -> Tensor:
        parts, i = {}, 0
        for n, s in zip(names, shapes):
            parts[n] = vec[i:i + s.numel()].reshape(s)
            i += s.numel()
        return loss(functional_call(model, parts, (data[0],)), data[1])

    return torch.autograd.functional.hessian(f, theta)


def read_one(tracker: SharpnessTracker, model: nn.Module, opt: torch.optim.Optimizer, data: tuple[Tensor, Tensor],
             records: list[RunRecord], step: int = 0, loss: Any = mse) -> tuple[UpdateReading, Tensor, Tensor]:
    theta0 = flat(model)
    tracker.before_step(step, model)
    take_step(model, opt, data, loss)
    tracker.after_step(step, model, opt)
    rec = [r for r in records if isinstance(r, UpdateReading)][-1]
    return rec, theta0, flat(model) - theta0


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_hvp_form_on_a_quadratic_is_the_rayleigh_quotient_of_A(momentum: float) -> None:
    model, data, a = designed_quadratic()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=momentum)
    tracker, records = tracker_for(data, "hvp")
    for step in range(3):  # with momentum the later updates are not −η∇L
        rec, _, u = read_one(tracker, model, opt, data, records, step)
        assert rec.step == step and rec.method == "hvp"
        assert rec.kappa == pytest.approx(float(u @ a @ u / (u @ u)), rel=1e-12)
        assert rec.update_norm == pytest.approx(float(u.norm()), rel=1e-12)
        assert rec.cost["hvps"] == 1 and rec.cost["forwards"] == 0
        assert rec.kappa_preconditioned is None and rec.thresholds["edge"] == pytest.approx(
            2 / 0.1 if momentum == 0 else (2 + 2 * momentum) / 0.1)


def test_hvp_form_is_taken_at_theta_t_and_leaves_the_model_as_the_step_left_it() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    data = (torch.randn(10, 3, dtype=torch.float64), torch.randn(10, 2, dtype=torch.float64))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    tracker, records = tracker_for(data, "hvp")
    rec, theta0, u = read_one(tracker, model, opt, data, records)
    grads = [p.grad.clone() for p in model.parameters()]  # type: ignore[union-attr]
    h0 = dense_hessian(model, data, theta0)
    h1 = dense_hessian(model, data, theta0 + u)
    at0, at1 = float(u @ h0 @ u / (u @ u)), float(u @ h1 @ u / (u @ u))
    assert abs(at0 - at1) > 1e-3 * abs(at0)  # the two points differ enough to tell apart
    assert rec.kappa == pytest.approx(at0, rel=1e-10)
    assert torch.equal(flat(model), theta0 + u)  # θ_{t+1}, bit for bit (u was formed from it)
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, model.parameters()))


def fd_bound_quadratic(x: Tensor, w0: Tensor, u: Tensor, a: Tensor) -> float:
    """The rounding bound of the fd quotient of ``L(w) = (1/N) Σ_n ½ (x_nᵀw)²`` in float64.

    Each ``L(w)`` evaluated: ``x_nᵀw`` errs by ``γ_d Σ_i |x_ni w_i|``, its square by ``(2γ_d + ε)`` times
    ``F_n² = (Σ_i |x_ni w_i|)²``, the mean of ``N`` terms by ``γ_N``: ``|δL| ≤ (2d + N + 2) ε L̃`` with
    ``L̃ = (1/N) Σ_n ½ F_n²`` (first order, ``γ_n ≈ nε``). The points ``w ± u`` are rounded too: a
    perturbation ``δ`` with ``|δ_i| ≤ ε|w_i ± u_i|`` moves ``L`` by ``∇Lᵀδ + O(δ²)``. So
    ``|D − uᵀAu| ≤ (2d + N + 2) ε (L̃₊ + 2L̃₀ + L̃₋) + ε Σ_i |∇L_i| (|w+u|_i + |w−u|_i) + ε² terms``."""
    n, d = x.shape

    def tilde(w: Tensor) -> float:
        return float(0.5 * ((x.abs() @ w.abs()) ** 2).mean())

    evals = (2 * d + n + 2) * EPS64 * (tilde(w0 + u) + 2 * tilde(w0) + tilde(w0 - u))
    g = a @ w0
    points = EPS64 * float(g.abs() @ ((w0 + u).abs() + (w0 - u).abs()))
    return 1.01 * (evals + points) / float(u @ u)


def test_fd_form_on_a_quadratic_is_exact_within_its_rounding_bound() -> None:
    model, data, a = designed_quadratic()
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    tracker, records = tracker_for(data, "fd")
    rec, theta0, u = read_one(tracker, model, opt, data, records)
    exact = float(u @ a @ u / (u @ u))
    bound = fd_bound_quadratic(data[0], theta0, u, a)
    assert abs(rec.kappa - exact) <= bound
    assert bound < 1e-10 * exact  # the bound is tight enough to mean something
    assert rec.cost == {"hvps": 0, "forwards": 3, "seconds": rec.cost["seconds"]}
    lm, l0, lp = rec.fd["losses"]
    assert rec.fd["rounding"] == pytest.approx(EPS64 * (abs(lp) + 2 * abs(l0) + abs(lm)) / float(u @ u))


class Square(nn.Module):
    """``f(x) = (xᵀw)²``: with ``loss = mean ½(f − y)²`` a quartic polynomial in ``w``."""

    def __init__(self, w: Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w.clone())

    def forward(self, x: Tensor) -> Tensor:
        return (x @ self.w)[:, None] ** 2


def half_mse(out: Tensor, y: Tensor) -> Tensor:
    return 0.5 * (out - y).pow(2).mean()


def test_fd_form_on_a_quartic_differs_from_hvp_by_the_fourth_derivative_over_12() -> None:
    """``g(s) = mean_n ½((a_n + s b_n)² − y_n)²`` (``a = Xw``, ``b = Xu``) is a quartic in ``s`` whose ``s⁴``
    coefficient is ``mean ½ b⁴``; so ``g(1) − 2g(0) + g(−1) − g''(0) = 2 c₄ = mean b⁴``: ``(1/12) g''''(0)``."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(8, 4, generator=gen, dtype=torch.float64)
    w = 0.3 * torch.randn(4, generator=gen, dtype=torch.float64)
    data = (x, torch.rand(8, 1, generator=gen, dtype=torch.float64))
    readings = {}
    for method in ("hvp", "fd"):
        model = Square(w)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        tracker, records = tracker_for(data, method, loss=half_mse)
        readings[method], _, u = read_one(tracker, model, opt, data, records, loss=half_mse)
    fourth = float(((x @ u) ** 4).mean()) / float(u @ u)
    assert fourth > 1e-3 * abs(readings["hvp"].kappa)  # a difference the test can see
    assert readings["fd"].kappa - readings["hvp"].kappa == pytest.approx(fourth, rel=1e-7)


def test_adam_preconditioned_form_against_a_dense_computation() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    data = (torch.randn(12, 3, dtype=torch.float64), torch.randn(12, 2, dtype=torch.float64))
    beta2, eps = 0.99, 1e-6
    opt = torch.optim.Adam(model.parameters(), lr=0.01, betas=(0.9, beta2), eps=eps)
    for method in ("hvp", "fd"):
        tracker, records = tracker_for(data, method)
        for step in range(3):
            rec, theta0, u = read_one(tracker, model, opt, data, records, step)
        v = torch.cat([opt.state[p]["exp_avg_sq"].reshape(-1) for p in model.parameters()])
        t = int(opt.state[next(iter(model.parameters()))]["step"])
        p_diag = (v / (1 - beta2 ** t)).sqrt() + eps  # the denominator of the step just taken
        h = dense_hessian(model, data, theta0)
        uhu = float(u @ h @ u)
        rel = 1e-10 if method == "hvp" else 1e-3  # fd: the triangle-weighted curvature over θ_t ± u
        assert rec.kappa_preconditioned == pytest.approx(uhu / float(p_diag @ u ** 2), rel=rel)
        assert rec.uPu == pytest.approx(float(p_diag @ u ** 2), rel=1e-12)
        assert rec.kappa == pytest.approx(uhu / float(u @ u), rel=rel)
        assert rec.thresholds["rule"] == "adam_edge" and rec.settings["preconditioner"] == "adam"


def test_update_every_before_step_and_bad_input() -> None:
    model, data, _ = designed_quadratic()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tracker, records = tracker_for(data, "hvp", update_every=3)
    for step in range(7):
        tracker.before_step(step, model)
        take_step(model, opt, data)
        tracker.after_step(step, model, opt)
    assert [r.step for r in records] == [0, 3, 6]
    take_step(model, opt, data)
    tracker.after_step(9, model, opt)  # no before_step: nothing to read
    assert len(records) == 3
    with pytest.raises(ConfigError, match="update_curvature must be one of hvp, fd .*, got 'lanczos'"):
        SharpnessTracker(data, mse, every=1, update_curvature="lanczos")
    assert SharpnessTracker(data, mse, every=1, update_curvature=True).update_curvature == "hvp"
    assert SharpnessTracker(data, mse, every=1, update_curvature=False).update_curvature is None
    with pytest.raises(ConfigError, match="update_every"):
        SharpnessTracker(data, mse, every=1, update_curvature="fd", update_every=0)


def test_a_captured_theta_survives_a_state_round_trip() -> None:
    model, data, a = designed_quadratic()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tracker, _ = tracker_for(data, "hvp")
    tracker.before_step(4, model)
    state = tracker.state_dict()
    take_step(model, opt, data)
    fresh, records = tracker_for(data, "hvp")
    fresh.load_state_dict(state)
    theta0 = state["update_before"]["params"]["weight"][0]
    fresh.after_step(4, model, opt)
    u = flat(model) - theta0
    assert records[0].step == 4 and records[0].kappa == pytest.approx(float(u @ a @ u / (u @ u)), rel=1e-12)
    with pytest.raises(ConfigError, match="update_before"):
        fresh.load_state_dict({**state, "update_before": {"step": 1, "params": [1]}})


def tiny(**overrides: Any) -> TrainConfig:
    base = TrainConfig(model={"name": "mlp", "kwargs": {"in_features": 40, "num_classes": 10, "widths": [16],
                                                         "activation": "tanh"}},
                       data="mnist1d", n=64, physical_batch_size=24, steps=9, measure_every=3, checkpoint_every=3,
                       loss="mse", optimizer_kwargs={"lr": 0.5}, dtype="float64", update_curvature="hvp",
                       curvature=RUN_DEFAULTS.replace(k=1))
    return base.with_overrides(overrides)


class Crash(Exception):
    pass


@pytest.mark.parametrize("crash_at", [6, 7])  # after checkpoint 6 and θ_6's capture; after record 6 is written
def test_the_runner_records_update_curvature_and_a_killed_run_resumes_to_the_same_records(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crash_at: int) -> None:
    cfg = tiny(update_every=2, optimizer="sgd", **{"optimizer_kwargs.momentum": 0.9})
    train(cfg, tmp_path / "ref")
    reference = RunDirectory(tmp_path / "ref").read_metrics()
    readings = [r for r in reference if r["kind"] == "update_curvature"]
    assert [r["step"] for r in readings] == [0, 2, 4, 6, 8]
    summary = RunDirectory(tmp_path / "ref").read_summary()
    assert summary is not None and summary["update_curvature"] == {"method": "hvp", "every": 2, "readings": 5,
                                                                   "hvps": 5, "forwards": 0}
    measured = {r["step"]: r for r in reference if r["kind"] == "measurement"}
    for r in readings:
        assert r["kappa"] > 0 and r["cost"]["hvps"] == 1
        if r["step"] in measured:  # a Rayleigh quotient: at most λ_max (measured at the same θ_t)
            assert r["kappa"] <= measured[r["step"]]["eigenvalues"][0] * (1 + 1e-6)

    apply = runner_module._Session.apply
    taken: list[int] = []

    def crash(session: Any, closure: Any) -> None:
        if len(taken) == crash_at:
            raise Crash
        taken.append(1)
        apply(session, closure)

    monkeypatch.setattr(runner_module._Session, "apply", crash)
    with pytest.raises(Crash):
        train(cfg, tmp_path / "run")
    monkeypatch.setattr(runner_module._Session, "apply", apply)
    train(cfg, tmp_path / "run")
    assert without_timings(RunDirectory(tmp_path / "run").read_metrics()) == without_timings(reference)


def test_config_refuses_a_bad_method_in_one_line() -> None:
    with pytest.raises(ConfigError, match=r"^update_curvature must be one of hvp, fd \(true: hvp; false or null: off\), "
                                          r"got 'yes'$"):
        tiny(update_curvature="yes")
    with pytest.raises(ConfigError, match="update_every"):
        tiny(update_every=0)
    assert tiny(update_curvature=None).update_curvature is None
    with pytest.raises(ConfigError, match="got 1"):
        tiny(update_curvature=1)


def test_cli_train_writes_fd_readings_with_their_cost(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "eos-gd", "--scale", "smoke", "--out", str(out), "--set", "steps=4",
                                      "--set", "update_curvature=fd", "--set", "trace=false"])
    assert result.exit_code == 0, result.output
    readings = [r for r in RunDirectory(out).read_metrics() if r["kind"] == "update_curvature"]
    assert [r["step"] for r in readings] == [0, 1, 2, 3]
    assert all(r["method"] == "fd" and r["cost"]["forwards"] == 3 and math.isfinite(r["kappa"]) for r in readings)


def test_chart_names_of_an_update_curvature_record() -> None:
    from sharpscope.track.tags import readable_scalars

    rec = {"kind": "update_curvature", "step": 3, "method": "hvp", "kappa": 7.5, "kappa_preconditioned": None,
           "update_norm": 0.1, "cost": {"hvps": 1, "forwards": 0, "seconds": 0.01}}
    assert readable_scalars(rec) == {"sharpness/kappa_u": 7.5, "update_curvature/update_norm": 0.1,
                                     "update_curvature/hvps": 1.0, "update_curvature/forwards": 0.0}


def test_after_step_with_another_model_is_refused_in_one_line() -> None:
    model, data, _ = designed_quadratic()
    tracker, _ = tracker_for(data, "fd")
    tracker.before_step(0, model)
    other = nn.Linear(6, 1, bias=True).double()
    with pytest.raises(ConfigError, match="parameters differ from those before_step captured"):
        tracker.after_step(0, other, None)


def test_a_misspelt_method_is_refused_not_read_as_finite_differences() -> None:
    from sharpscope.curvature import Objective
    from sharpscope.track.update_curvature import curvature_along

    model, data, _ = designed_quadratic()
    objective = Objective(model, mse, data)
    before = {n: p.detach().clone() for n, p in objective.params.items()}
    with pytest.raises(ConfigError, match="method must be 'hvp' or 'fd', got 'hpv'"):
        curvature_along("hpv", objective, before)
    assert curvature_along("fd", objective, before).method == "fd"  # the names it takes still work
