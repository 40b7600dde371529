"""The built-in default job: train a small MLP on MNIST-1D for a few seconds, then probe it.

MNIST-1D (Greydanus & Kobak) is generated offline by the ``mnist1d`` package, so this runs with
no network and no data files.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from sharpscope.data import ArrayDataset, mnist1d
from sharpscope.losses import accuracy
from sharpscope.models import ModelSpec
from sharpscope.validation import check_budget, check_seed

DEMO_SPEC = ModelSpec("mlp", {"in_features": 40, "num_classes": 10, "widths": [100, 100], "activation": "relu"})


@dataclass(frozen=True)
class DemoRun:
    """The trained demo model, its spec and training set, the steps taken, their seconds and the train accuracy."""

    model: nn.Module
    spec: ModelSpec
    data: ArrayDataset
    steps: int
    seconds: float
    train_accuracy: float


MAX_STEPS = 100_000  # about ten minutes on one CPU core


def check_demo(steps: int, seed: int) -> None:
    """The checks of :func:`train_demo_model`'s arguments, before any work (a command line calls it first)."""
    check_budget("steps", steps, low=1, limit=MAX_STEPS, unit="steps", seconds_each=5e-3,
                 measured_on="the demo model on one CPU core", hint="the demo needs about 1,500; train longer "
                                                                    "runs with `sharpscope train`")
    check_seed("seed", seed)


def train_demo_model(steps: int = 1500, *, seed: int = 0) -> DemoRun:
    """``steps`` steps of SGD with momentum (lr 0.05, β 0.9, batch 128) on the 4,000 MNIST-1D
    training examples: a few seconds on two CPU cores, and the same model on every machine.
    More than :data:`MAX_STEPS` steps are refused, with an estimate of their time."""
    check_demo(steps, seed)
    data = mnist1d(train=True)
    torch.manual_seed(seed)
    model = DEMO_SPEC.build()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(0, len(data), (128,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(model(data.x[idx]), data.y[idx]).backward()
        opt.step()
    with torch.no_grad():
        acc = accuracy(model(data.x), data.y)
    return DemoRun(model, DEMO_SPEC, data, steps, time.perf_counter() - start, acc)
