"""Sparse SAM in the runner: a Fisher mask from real scores before the first step, never an empty mask."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sharpscope.losses import get_loss
from sharpscope.optim import empirical_fisher_diagonal, fisher_mask
from sharpscope.optim.sparse_sam import num_kept
from sharpscope.track import TrainConfig, build_data, build_model, build_optimizer, train

pytestmark = pytest.mark.usefixtures("single_thread")


def config(optimizer: str, **kwargs: object) -> TrainConfig:
    return TrainConfig(model={"name": "mlp", "kwargs": {"in_features": 40, "num_classes": 10, "widths": [16],
                                                         "activation": "tanh"}},
                       data="mnist1d", n=64, physical_batch_size=64, steps=3, measure_every=3, checkpoint_every=3,
                       loss="ce", optimizer=optimizer, dtype="float64",
                       optimizer_kwargs={"lr": 0.5, **({"rho": 0.5} if optimizer != "gd" else {}), **kwargs})


def test_fisher_mask_is_built_from_the_training_set_before_step_zero() -> None:
    cfg = config("sparse-sam", sparsity=0.5, fisher_samples=16)
    model, _ = build_model(cfg, torch.device("cpu"), torch.float64)
    data, _ = build_data(cfg)
    data = data.to(torch.device("cpu"), torch.float64)
    loss = get_loss("ce")
    opt = build_optimizer(cfg, model, data, loss)
    d = sum(p.numel() for p in model.parameters())
    assert sum(int(m.sum()) for m in opt.masks) == num_kept(d, 0.5)
    idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(cfg.seed + 2))[:16]
    scores = empirical_fisher_diagonal(model, lambda m, x, y: loss(m(x), y), data.x[idx], data.y[idx])
    for got, want in zip(opt.masks, fisher_mask(scores, 0.5)):
        assert torch.equal(got, want)


def test_sparse_sam_run_differs_from_gd_and_from_sam(tmp_path: Path) -> None:
    finals = {}
    for name, cfg in {"gd": config("gd"), "sam": config("sam"), "ssam": config("sparse-sam", sparsity=0.5)}.items():
        summary = train(cfg, tmp_path / name)
        finals[name] = summary.final["train_loss"]
    assert finals["ssam"] != finals["gd"] and finals["ssam"] != finals["sam"]
