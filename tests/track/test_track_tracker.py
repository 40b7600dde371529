"""The tracker on linear least squares, where H = XᵀX/N, the gradient and the losses are known exactly."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from sharpscope.curvature import CurvatureSettings
from sharpscope.io.jsonsafe import dumps, loads
from sharpscope.io.records import Measurement
from sharpscope.losses import mse
from sharpscope.optim import SAM
from sharpscope.thresholds import sam_edge
from sharpscope.track import SharpnessTracker, default_thresholds

pytestmark = pytest.mark.usefixtures("single_thread")


def problem(n: int = 200, d: int = 40, seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    scales = torch.linspace(0.2, 3.0, d, dtype=torch.float64)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64) * scales
    y = torch.randn(n, 1, generator=gen, dtype=torch.float64)
    model = nn.Linear(d, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(1, d, generator=gen, dtype=torch.float64))
    return model, x, y


def without_seconds(obj: object) -> object:
    if isinstance(obj, dict):
        return {k: without_seconds(v) for k, v in obj.items() if "seconds" not in k}
    if isinstance(obj, list):
        return [without_seconds(v) for v in obj]
    return obj


def test_eigenvalues_trace_gradient_and_losses_are_exact_on_least_squares() -> None:
    model, x, y = problem()
    xt, yt = x[:50] * 0.5, y[:50]
    tracker = SharpnessTracker((x, y), mse, every=1,
                               curvature=CurvatureSettings(k=3, tol=1e-10, trace_matvecs=36, hvp_mode="rev-rev"),
                               trace=True,
                               batch_size=64, test_data=(xt, yt))
    rec = tracker.measure(0, model, torch.optim.SGD(model.parameters(), lr=0.1))
    hessian = x.T @ x / len(x)  # ½‖Xw − y‖²/N has Hessian XᵀX/N
    exact = torch.linalg.eigvalsh(hessian).flip(0)[:3]
    assert torch.allclose(torch.tensor(rec.eigenvalues, dtype=torch.float64), exact, rtol=1e-8, atol=0)
    assert rec.converged and max(rec.residuals) < 1e-10 and rec.hvps == rec.lanczos_steps > 3
    tr = rec.trace
    assert abs(tr["estimate"] - float(hessian.trace())) <= 5 * tr["stderr"] + 1e-9 and tr["hvps"] == 36
    w = model.weight.detach().T
    residual = x @ w - y
    assert rec.grad_norm == pytest.approx(float((x.T @ residual / len(x)).norm()), rel=1e-12)
    assert rec.train_loss == pytest.approx(float(0.5 * (residual**2).mean()), rel=1e-12)
    assert rec.test_loss == pytest.approx(float(0.5 * ((xt @ w - yt) ** 2).mean()), rel=1e-12)
    assert rec.train_acc is None  # one output column: no classes
    assert rec.thresholds["rule"] == "gd_edge" and rec.thresholds["edge"] == pytest.approx(20.0)
    assert rec.cost["hvps"] == rec.hvps + 36 and rec.cost["seconds"] > 0
    s = rec.settings
    assert (s["probe_examples"], s["num_batches"], s["bn"], s["hvp_mode"], s["dim"], s["test_examples"]) == \
        (200, 4, "eval", "rev-rev", 40, 50)
    assert loads(dumps(rec.to_json())) == rec.to_json()  # strict JSON


def test_warm_start_uses_fewer_products_than_cold_and_survives_a_state_round_trip() -> None:
    model, x, y = problem()
    kwargs = dict(every=1, curvature=CurvatureSettings(k=2, tol=1e-8, hvp_mode="rev-rev"), seed=3)
    tracker = SharpnessTracker((x, y), mse, **kwargs)
    cold = tracker.measure(0, model)
    state = tracker.state_dict()
    warm = tracker.measure(1, model)  # same Hessian (quadratic): the previous eigenvectors span the answer
    assert cold.warm_start is False and warm.warm_start is True
    assert warm.hvps < cold.hvps
    assert warm.eigenvalues == pytest.approx(cold.eigenvalues, rel=1e-9)
    never_warm = SharpnessTracker((x, y), mse, warm_start=False, **kwargs).measure(1, model)
    assert never_warm.warm_start is False and never_warm.hvps > warm.hvps
    restored = SharpnessTracker((x, y), mse, **kwargs)
    restored.load_state_dict(state)
    again = restored.measure(1, model)
    assert without_seconds(again.to_json()) == without_seconds(warm.to_json())  # a resumed tracker continues identically


def test_measuring_changes_nothing_in_the_training_state() -> None:
    model, x, y = problem()
    model.train()
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)
    before = copy.deepcopy(model.state_dict())
    rng = torch.get_rng_state()
    SharpnessTracker((x, y), mse, every=1, curvature=CurvatureSettings(k=2, trace_matvecs=8),
                     trace=True).measure(0, model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(torch.equal(p.grad, torch.full_like(p, 7.0)) for p in model.parameters())
    assert model.training and torch.equal(torch.get_rng_state(), rng)


def test_thresholds_follow_the_optimizer() -> None:
    model, x, y = problem()
    params = list(model.parameters())
    assert default_thresholds(0, None, 1.0) == {}
    mom = default_thresholds(0, torch.optim.SGD(params, lr=0.01, momentum=0.9), 1.0)
    assert mom["rule"] == "momentum_edge" and mom["edge"] == pytest.approx(380.0) and mom["gd_edge"] == 200.0
    nes = default_thresholds(0, torch.optim.SGD(params, lr=0.01, momentum=0.9, nesterov=True), 1.0)
    assert nes["edge"] == pytest.approx(2 * 1.9 / (0.01 * 2.8))
    wd = default_thresholds(0, torch.optim.SGD(params, lr=0.01, weight_decay=5e-4), 1.0)
    assert wd["weight_decay"] == 5e-4 and "H + weight_decay*I" in wd["weight_decay_note"]
    assert "weight_decay" not in mom
    adam = default_thresholds(0, torch.optim.Adam(params, lr=0.01), 1.0)
    assert adam["rule"] == "adam_edge" and adam["edge"] == pytest.approx(3800.0) and "P^-1" in adam["on"]
    tracker = SharpnessTracker((x, y), mse, every=1, curvature=CurvatureSettings(hvp_mode="rev-rev"))
    rec = tracker.measure(0, model, SAM(params, torch.optim.SGD, rho=0.05, lr=0.01))
    th = rec.thresholds
    assert th["rule"] == "sam_edge" and th["edge"] == pytest.approx(sam_edge(0.01, 0.05, rec.grad_norm), rel=1e-12)
    assert th["edge"] < 200.0 and th["derived_for"] == "sam(p=2) over gd"


def test_non_finite_parameters_are_recorded_not_raised_and_any_loop_can_use_the_tracker() -> None:
    _, x, y = problem()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(40, 8), nn.Tanh(), nn.Linear(8, 1)).double()  # H depends on the weights
    records: list[Measurement] = []
    tracker = SharpnessTracker((x, y), mse, every=2, curvature=CurvatureSettings(k=1, trace_matvecs=8), trace=True,
                               sink=records.append)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for step in range(5):
        tracker.maybe_measure(step, model, opt)
        opt.zero_grad()
        mse(model(x), y).backward()
        opt.step()
    assert [r.step for r in records] == [0, 2, 4] and [r.warm_start for r in records] == [False, True, True]
    with torch.no_grad():
        model[0].weight[0, 0] = math.nan
    rec = tracker.measure(6, model, opt)
    assert rec.eigenvalues is None and rec.trace is None and "eigenvalues" in rec.errors
    assert math.isnan(rec.train_loss) and math.isnan(rec.grad_norm)
    assert loads(dumps(rec.to_json()))["train_loss"] == "NaN"
    assert tracker.measure(7, model, opt).warm_start is False  # no vectors survive a failed measurement


@pytest.mark.parametrize(("setting", "streamed", "used"), [("auto", False, True), ("auto", True, False),
                                                           (True, False, True), (False, False, False)])
def test_a_record_names_the_graph_cache_in_use_not_the_setting(setting: object, streamed: bool, used: bool) -> None:
    model, x, y = problem(n=96, d=6)
    data = (torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32) if streamed else (x, y))
    tracker = SharpnessTracker(data, mse, every=1, batch_size=None if streamed else 32,
                               curvature=CurvatureSettings(hvp_mode="rev-rev", cache_graphs=setting))
    settings = tracker.measure(0, model).settings
    assert settings is not None and settings["cache_graphs"] is used and settings["hvp_mode"] == "rev-rev"
