"""Mini-batch SAM: the tracker records the gradient norm SAM's step normalised and the SAM-edge from it;
no edge is drawn or judged for a SAM set-up the edge is not derived for."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sharpscope.curvature import CurvatureSettings
from sharpscope.data import ShuffledLoader
from sharpscope.io import read_checkpoint
from sharpscope.io.records import RunRecord, SamBatch
from sharpscope.losses import mse, mse_mean
from sharpscope.optim import SAM, SparseSAM
from sharpscope.plots.trajectory import sharpness_data
from sharpscope.thresholds import sam_edge
from sharpscope.track import RunDirectory, SharpnessTracker, TrainConfig, train
from sharpscope.track.runner import build_data, build_model


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
    records: list[RunRecord] = []
    tracker = SharpnessTracker((x, y), mse, every=1, curvature=CurvatureSettings(hvp_mode="rev-rev"),
                               sink=records.append)
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
    assert isinstance(batch, SamBatch) and batch.step == 0
    assert batch.batch_grad_norm == pytest.approx(hand_norm, rel=1e-12)
    assert batch.sam_edge_batch == pytest.approx(sam_edge(0.02, 0.05, hand_norm), rel=1e-12)
    assert abs(full.grad_norm - hand_norm) > 1e-6  # the two norms differ, so the check can fail
    tracker.after_step(1, model, opt)  # no measurement at step 1: nothing recorded
    assert records[-1] is batch


def test_no_edge_where_none_is_derived(tmp_path: Path) -> None:
    """ASAM, Sparse SAM and SAM over Nesterov momentum: the thresholds keep the formula's value as indicative,
    but ``edge`` is None, and the figure data draws no edge; SAM over heavy-ball momentum gets the momentum
    form of the edge and plain SAM its own."""
    model, x, y = _problem()
    tracker = SharpnessTracker((x, y), mse, every=1, curvature=CurvatureSettings(hvp_mode="rev-rev"))
    for opt in (SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.01, adaptive=True),
                SparseSAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.01, sparsity=0.5, mask="random"),
                SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.01, momentum=0.9, nesterov=True)):
        th = tracker.measure(0, model, opt).thresholds
        assert th["edge"] is None and th["sam_edge_indicative"] > 0 and "no edge applies" in th["derived_for"]
    heavy = tracker.measure(0, model, SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.01, momentum=0.9))
    g = heavy.grad_norm
    assert heavy.thresholds["edge"] == pytest.approx(sam_edge(0.01, 0.05, g, momentum=0.9), rel=1e-12)
    assert heavy.thresholds["edge"] > sam_edge(0.01, 0.05, g)
    base = {"model": {"name": "mlp", "kwargs": {"in_features": 40, "num_classes": 10, "widths": [8]}},
            "data": "mnist1d", "n": 64, "loss": "mse-mean", "optimizer": "sam", "batch_size": 16, "steps": 4,
            "measure_every": 2, "checkpoint_every": 2}
    runs = {}
    for name, kw in (("adaptive", {"lr": 0.05, "rho": 0.5, "adaptive": True}), ("plain", {"lr": 0.05, "rho": 0.05})):
        train(TrainConfig.from_dict({**base, "optimizer_kwargs": kw}), tmp_path / name)
        runs[name] = tmp_path / name
    data = sharpness_data([runs["adaptive"], runs["plain"]])
    assert data["runs"][0]["edge"] is None
    assert np.isfinite(data["runs"][1]["edge"]).all()
    kinds = [r.get("kind") for r in RunDirectory(runs["plain"]).read_metrics()]
    assert kinds.count("sam_batch") == 2  # after the steps from the measurements at 0 and 2 (not 4: the end)


def test_batch_sharpness_is_the_top_eigenvalue_of_the_step_batch(tmp_path: Path) -> None:
    """With ``batch_sharpness``, each ``"sam_batch"`` record holds λ_max of the loss on the very mini-batch the
    step used, at θ_t: recomputed here from the checkpoint at t and the loader's batch, by a dense float64
    Hessian."""
    cfg = TrainConfig.from_dict({
        "model": {"name": "mlp", "kwargs": {"in_features": 40, "num_classes": 10, "widths": [6]}},
        "data": "mnist1d", "n": 48, "loss": "mse-mean", "optimizer": "sam", "batch_size": 16, "steps": 3,
        "optimizer_kwargs": {"lr": 0.05, "rho": 0.05}, "measure_every": 2, "checkpoint_every": 1,
        "keep_checkpoints": True, "batch_sharpness": True, "dtype": "float64", "tol": 1e-8})
    train(cfg, tmp_path / "run")
    records = [r for r in RunDirectory(tmp_path / "run").read_metrics() if r.get("kind") == "sam_batch"]
    assert [r["step"] for r in records] == [0, 2]
    train_set, _ = build_data(cfg)
    model, _ = build_model(cfg, torch.device("cpu"), torch.float64)
    for rec in records:
        loader = ShuffledLoader(train_set, 16, torch.Generator().manual_seed(cfg.seed + 1))  # the run's order
        for _ in range(rec["step"] + 1):  # the loader's batches up to the step's own
            xb, yb = loader.next_batch()
        xb = xb.to(torch.float64)
        raw = read_checkpoint(tmp_path / "run" / "checkpoints" / f"step-{rec['step']:08d}.pt")
        model.load_state_dict(raw.state_dict)
        params = dict(model.named_parameters())
        flat = torch.cat([p.detach().reshape(-1) for p in params.values()])

        def loss_of(v: torch.Tensor) -> torch.Tensor:
            out, i = {}, 0
            for name, p in params.items():
                out[name] = v[i:i + p.numel()].view_as(p)
                i += p.numel()
            return mse_mean(torch.func.functional_call(model, out, (xb,)), yb)

        dense = torch.autograd.functional.hessian(loss_of, flat)
        top = float(torch.linalg.eigvalsh(dense)[-1])
        assert rec["batch_sharpness"]["eigenvalue"] == pytest.approx(top, rel=1e-6)
        assert rec["batch_sharpness"]["examples"] == 16 and rec["batch_sharpness"]["hvps"] > 0
