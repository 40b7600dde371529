"""Mini-batch SAM: the tracker records the gradient norm SAM's step normalised and the SAM-edge from it;
no edge is drawn or judged for a SAM set-up the edge is not derived for."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sharpscope.losses import mse
from sharpscope.optim import SAM
from sharpscope.plots.trajectory import sharpness_data
from sharpscope.thresholds import sam_edge
from sharpscope.track import RunDirectory, SharpnessTracker, TrainConfig, train


def _problem() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 6, generator=g, dtype=torch.float64), torch.randn(32, 2, generator=g, dtype=torch.float64)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 2)).double()
    return model, x, y


def test_batch_norm_is_the_norm_sam_normalised() -> None:
    """After the step from θ_t on a mini-batch B, the record holds ‖∇L_B(θ_t)‖ (computed here by hand) and
    the SAM-edge of that norm, next to the measurement's full-batch ‖∇L(θ_t)‖."""
    model, x, y = _problem()
    records: list[dict] = []
    tracker = SharpnessTracker((x, y), mse, every=1, hvp_mode="rev-rev", sink=records.append)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.02)
    xb, yb = x[:8], y[:8]
    hand = torch.autograd.grad(mse(model(xb), yb), list(model.parameters()))
    hand_norm = float(torch.cat([h.reshape(-1) for h in hand]).norm())
    full = tracker.measure(0, model, opt)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = mse(model(xb), yb)
        loss.backward()
        return loss

    opt.step(closure)
    tracker.after_step(0, model, opt)
    batch = records[-1]
    assert batch["kind"] == "sam_batch" and batch["step"] == 0
    assert batch["batch_grad_norm"] == pytest.approx(hand_norm, rel=1e-12)
    assert batch["sam_edge_batch"] == pytest.approx(sam_edge(0.02, 0.05, hand_norm), rel=1e-12)
    assert abs(full["grad_norm"] - hand_norm) > 1e-6  # the two norms differ, so the check can fail
    tracker.after_step(1, model, opt)  # no measurement at step 1: nothing recorded
    assert records[-1] is batch


def test_no_edge_where_none_is_derived(tmp_path: Path) -> None:
    """SAM over momentum SGD: the thresholds keep the formula's value as indicative, but ``edge`` is None,
    and the figure data draws no edge; plain SAM keeps its edge."""
    model, x, y = _problem()
    tracker = SharpnessTracker((x, y), mse, every=1, hvp_mode="rev-rev")
    th = tracker.measure(0, model, SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.01,
                                       momentum=0.9))["thresholds"]
    assert th["edge"] is None and th["sam_edge_indicative"] > 0 and "no edge applies" in th["derived_for"]
    base = {"model": {"name": "mlp", "kwargs": {"in_features": 40, "num_classes": 10, "widths": [8]}},
            "data": "mnist1d", "n": 64, "loss": "mse-mean", "optimizer": "sam", "batch_size": 16, "steps": 4,
            "measure_every": 2, "checkpoint_every": 2}
    runs = {}
    for name, kw in (("momentum", {"lr": 0.05, "rho": 0.05, "momentum": 0.9}), ("plain", {"lr": 0.05, "rho": 0.05})):
        train(TrainConfig.from_dict({**base, "optimizer_kwargs": kw}), tmp_path / name)
        runs[name] = tmp_path / name
    data = sharpness_data([runs["momentum"], runs["plain"]])
    assert data["runs"][0]["edge"] is None
    assert np.isfinite(data["runs"][1]["edge"]).all()
    kinds = [r.get("kind") for r in RunDirectory(runs["plain"]).read_metrics()]
    assert kinds.count("sam_batch") == 2  # after the steps from the measurements at 0 and 2 (not 4: the end)
