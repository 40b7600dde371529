"""Fixed probes: the same trace probes and Lanczos starts at every step (common random numbers over steps)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sharpscope.curvature import CurvatureSettings
from sharpscope.errors import ConfigError
from sharpscope.losses import mse
from sharpscope.track import RunDirectory, SharpnessTracker, train
from tests.track.test_track_runner import tiny
from tests.track.test_track_tracker import problem

pytestmark = pytest.mark.usefixtures("single_thread")

SETTINGS = CurvatureSettings(k=2, tol=1e-10, trace_method="hutchinson", trace_matvecs=6, hvp_mode="rev-rev")


def readings(probes: str, steps: list[int], lr: float) -> list[dict]:
    """Trace and eigenvalue readings of least squares along SGD (``H = XᵀX/N`` whatever the weights)."""
    model, x, y = problem()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    tracker = SharpnessTracker((x, y), mse, every=1, curvature=SETTINGS, trace=True, warm_start=False, seed=3,
                               probes=probes)
    out = []
    for step in range(max(steps) + 1):
        if step in steps:
            out.append(tracker.measure(step, model, opt))
        opt.zero_grad()
        mse(model(x), y).backward()
        opt.step()
    return out


def test_fixed_probes_give_the_same_reading_of_the_same_hessian_at_every_step() -> None:
    """On a quadratic the Hessian is one matrix: with fixed probes the 6-probe Hutchinson estimate (far from
    exact) is the same number at every step although the weights move; redrawn probes scatter it."""
    fixed = readings("fixed", [0, 3, 8], lr=0.05)
    first = fixed[0].trace["estimate"]
    for rec in fixed[1:]:
        assert rec.trace["estimate"] == pytest.approx(first, rel=1e-12)
        assert rec.trace["stderr"] == pytest.approx(fixed[0].trace["stderr"], rel=1e-12)
    assert fixed[0].train_loss != fixed[2].train_loss  # the weights did move
    assert all(rec.settings["probes"] == "fixed" for rec in fixed)
    per_step = readings("per-step", [0, 3, 8], lr=0.05)
    assert per_step[0].trace["estimate"] == first  # fixed probes are those step 0 draws
    spread = max(abs(rec.trace["estimate"] - first) for rec in per_step[1:])
    assert spread > 1e-6 * abs(first)
    exact = float(torch.trace(problem()[1].T @ problem()[1]) / 200)
    assert abs(first - exact) > 1e-6 * exact  # six probes do not give the exact trace: the agreement is the probes'


def test_fixed_probes_with_unchanged_weights_give_identical_records() -> None:
    """Same weights, same probes: step 0 and step 5 read identical eigenvalues, residuals and trace."""
    a, b = readings("fixed", [0, 5], lr=0.0)
    for key in ("eigenvalues", "residuals", "hvps"):
        assert getattr(a, key) == getattr(b, key)
    assert a.trace["estimate"] == b.trace["estimate"] and a.trace["stderr"] == b.trace["stderr"]


def test_a_run_with_fixed_probes_records_them_and_bad_values_are_refused(tmp_path: Path) -> None:
    cfg = tiny(trace=True, probes="fixed", **{"optimizer_kwargs.lr": 0.0, "trace_matvecs": 6, "steps": 6})
    train(cfg, tmp_path / "run")
    records = [r for r in RunDirectory(tmp_path / "run").read_metrics() if r.get("kind") == "measurement"]
    assert [r["step"] for r in records] == [0, 3, 6]
    assert len({r["trace"]["estimate"] for r in records}) == 1 and records[0]["settings"]["probes"] == "fixed"
    with pytest.raises(ConfigError, match="probes"):
        tiny(probes="every-step")
    with pytest.raises(ConfigError, match="probes"):
        SharpnessTracker(problem()[1:], mse, every=1, probes="fixd")
