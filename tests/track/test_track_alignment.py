"""Alignment of the gradient and of the optimizer's update with the top eigenvectors, against closed forms.

On ``L(w) = ½ wᵀ H w`` with ``H = Q diag(a) Qᵀ`` (linear least squares with designed inputs) the
eigenvectors are the columns of ``Q`` and the gradient is ``H w``, so every cosine is known exactly.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from sharpscope.curvature.settings import RUN_DEFAULTS, CurvatureSettings
from sharpscope.errors import ConfigError
from sharpscope.io.jsonsafe import without_timings
from sharpscope.io.records import Alignment, RunRecord
from sharpscope.losses import mse
from sharpscope.track import RunDirectory, SharpnessTracker, TrainConfig, train
from sharpscope.track import runner as runner_module
from sharpscope.track.tracker import subspace_alignment

pytestmark = pytest.mark.usefixtures("single_thread")

SPECTRUM = torch.tensor([9.0, 5.0, 3.0, 1.5, 0.7, 0.2], dtype=torch.float64)
COEFFS = [0.3, -1.0, 2.0, 0.5, -0.4, 1.0]
K = 2


def quadratic() -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A model at ``w = Q c`` whose mean ``mse`` loss over ``(x, 0)`` is ``½ wᵀ Q diag(a) Qᵀ w``."""
    d = SPECTRUM.numel()
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    x = math.sqrt(d) * torch.diag(SPECTRUM.sqrt()) @ q.T  # XᵀX / N = Q diag(a) Qᵀ with N = d rows
    model = nn.Linear(d, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_((q @ torch.tensor(COEFFS, dtype=torch.float64))[None])
    return model, (x, torch.zeros(d, 1, dtype=torch.float64)), q


def gradient(model: nn.Module, q: torch.Tensor) -> torch.Tensor:
    """``∇L = H w`` in closed form."""
    return q @ torch.diag(SPECTRUM) @ q.T @ model.weight.detach()[0]


def closed_form(u: torch.Tensor, q: torch.Tensor, g: torch.Tensor) -> tuple[list[float], float]:
    """``cos(u, s_i q_i)`` with ``s_i = sign(gᵀq_i)`` for the top ``K`` eigenvectors, and ``‖P_K u‖/‖u‖``."""
    top = q[:, :K] * torch.sign(q[:, :K].T @ g)
    cos = top.T @ u / u.norm()
    return cos.tolist(), float(cos.norm())


def make_tracker(data: tuple[torch.Tensor, torch.Tensor]) -> tuple[SharpnessTracker, list[dict[str, Any]]]:
    records: list[RunRecord] = []
    tracker = SharpnessTracker(data, mse, every=1, curvature=CurvatureSettings(k=K, tol=1e-12, hvp_mode="rev-rev"),
                               alignment=True,
                               sink=records.append)
    return tracker, records


def sgd_step(model: nn.Module, opt: torch.optim.Optimizer, data: tuple[torch.Tensor, torch.Tensor]) -> None:
    opt.zero_grad()
    mse(model(data[0]), data[1]).backward()
    opt.step()


def test_a_gd_update_is_minus_the_gradient_in_every_eigendirection() -> None:
    model, data, q = quadratic()
    tracker, records = make_tracker(data)
    g = gradient(model, q)
    rec = tracker.measure(0, model)
    grad_cos, grad_fraction = closed_form(g, q, g)
    ac = SPECTRUM * torch.tensor(COEFFS, dtype=torch.float64)  # |cos(g, q_i)| = a_i |c_i| / ‖a ⊙ c‖
    assert grad_cos == pytest.approx((ac[:K].abs() / ac.norm()).tolist(), abs=1e-12)
    assert rec.grad_cos == pytest.approx(grad_cos, abs=1e-10)
    assert rec.grad_fraction == pytest.approx(grad_fraction, abs=1e-10)

    lr = 0.05
    sgd_step(model, torch.optim.SGD(model.parameters(), lr=lr), data)
    done = tracker.after_step(0, model)
    assert done is not None and records == [rec, done] and isinstance(done, Alignment) and done.step == 0
    assert list(done.update_cos or ()) == pytest.approx([-c for c in grad_cos], abs=1e-10)  # Δ = −η g
    assert done.update_fraction == pytest.approx(grad_fraction, abs=1e-10)
    assert done.update_norm == pytest.approx(lr * float(g.norm()), rel=1e-12)
    assert tracker.after_step(0, model) is None  # completed once; nothing is pending any more


def test_a_momentum_update_is_measured_as_taken_not_as_the_gradient() -> None:
    model, data, q = quadratic()
    tracker, records = make_tracker(data)
    lr, beta = 0.05, 0.9
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=beta)
    g0 = gradient(model, q)
    sgd_step(model, opt, data)
    assert tracker.after_step(0, model) is None and records == []  # step 0 was not measured
    g1 = gradient(model, q)
    tracker.measure(1, model)
    before = model.weight.detach()[0].clone()
    sgd_step(model, opt, data)
    delta = -lr * (beta * g0 + g1)  # the heavy-ball update from the momentum buffer
    torch.testing.assert_close(model.weight.detach()[0] - before, delta, rtol=1e-12, atol=1e-14)
    done = tracker.after_step(1, model)
    update_cos, update_fraction = closed_form(delta, q, g1)
    assert done is not None and list(done.update_cos or ()) == pytest.approx(update_cos, abs=1e-10)
    assert done.update_fraction == pytest.approx(update_fraction, abs=1e-10)
    assert 0 <= done.update_fraction <= 1 and update_fraction < 0.999  # Δ leaves the top-2 subspace


def test_a_pending_alignment_survives_a_state_round_trip() -> None:
    model, data, q = quadratic()
    tracker, records = make_tracker(data)
    tracker.measure(0, model)
    state = tracker.state_dict()
    assert state["alignment"]["step"] == 0 and state["alignment"]["theta"].device.type == "cpu"
    restored, again = make_tracker(data)
    restored.load_state_dict(state)
    sgd_step(model, torch.optim.SGD(model.parameters(), lr=0.05), data)
    assert restored.after_step(0, model) == tracker.after_step(0, model) == records[-1] == again[-1]
    restored.load_state_dict({"eigenvectors": None, "hvp_modes": {}})  # a checkpoint from before alignment
    assert restored.after_step(0, model) is None
    with pytest.raises(ConfigError, match="alignment must be None"):
        restored.load_state_dict({**state, "alignment": {"step": 0}})


def test_subspace_alignment_bounds() -> None:
    basis, _ = torch.linalg.qr(torch.randn(5, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    assert subspace_alignment(torch.zeros(5, dtype=torch.float64), basis) is None
    cos, fraction = subspace_alignment(basis @ torch.tensor([3.0, -4.0], dtype=torch.float64), basis)
    assert cos == pytest.approx([0.6, -0.8], abs=1e-12) and fraction == 1.0
    outside = torch.randn(5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    outside -= basis @ (basis.T @ outside)
    cos, fraction = subspace_alignment(outside, basis)
    assert fraction == pytest.approx(0.0, abs=1e-12)


def tiny(**overrides: Any) -> TrainConfig:
    """Full-batch GD on 64 MNIST-1D examples (physical batches 24, 24, 16), a 40-16-10 MLP, float64."""
    base = TrainConfig(model={"name": "mlp", "kwargs": {"in_features": 40, "num_classes": 10, "widths": [16],
                                                         "activation": "tanh"}},
                       data="mnist1d", n=64, physical_batch_size=24, steps=9, measure_every=3, checkpoint_every=3,
                       loss="mse", optimizer_kwargs={"lr": 0.5}, dtype="float64", alignment=True,
                       curvature=RUN_DEFAULTS.replace(k=2))
    return base.with_overrides(overrides)


class Crash(Exception):
    pass


def test_the_runner_records_gd_alignment_and_resumes_a_pending_one_exactly(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tiny()
    train(cfg, tmp_path / "ref")
    reference = RunDirectory(tmp_path / "ref").read_metrics()
    measured = {r["step"]: r for r in reference if r["kind"] == "measurement"}
    aligned = {r["step"]: r for r in reference if r["kind"] == "alignment"}
    assert sorted(measured) == [0, 3, 6, 9] and sorted(aligned) == [0, 3, 6]  # no update after the last step
    for step, rec in aligned.items():  # full-batch GD on the probe set: Δ = −η ∇L exactly
        grad = measured[step]["alignment"]
        assert rec["update_cos"] == pytest.approx([-c for c in grad["grad_cos"]], abs=1e-9)
        assert rec["update_fraction"] == pytest.approx(grad["grad_fraction"], abs=1e-9)
        assert rec["update_norm"] == pytest.approx(0.5 * measured[step]["grad_norm"], rel=1e-9)

    apply = runner_module._Session.apply
    taken: list[int] = []

    def crash_in_step_6(session: Any, closure: Any) -> None:  # killed after checkpoint 6, before Δ_6 exists
        if len(taken) == 6:
            raise Crash
        taken.append(1)
        apply(session, closure)

    monkeypatch.setattr(runner_module._Session, "apply", crash_in_step_6)
    with pytest.raises(Crash):
        train(cfg, tmp_path / "run")
    run = RunDirectory(tmp_path / "run")
    assert [(r["kind"], r["step"]) for r in run.read_metrics()][-1] == ("measurement", 6)
    monkeypatch.setattr(runner_module._Session, "apply", apply)
    train(cfg, tmp_path / "run")  # resumes from checkpoint 6, whose tracker state holds θ_6
    assert without_timings(run.read_metrics()) == without_timings(reference)
    with pytest.raises(ConfigError, match="alignment must be true or false"):
        tiny(alignment="yes")
