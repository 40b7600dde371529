"""Cross-check against an independent implementation: PyHessian's power iteration and Hutchinson."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sharpscope import HessianOperator, Objective, hutchinson, lanczos

pyhessian = pytest.importorskip("pyhessian")


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 7 * 7, 10))


def test_top_eigenvalue_and_trace_agree_with_pyhessian() -> None:
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 3, 16, 16, generator=gen), torch.randint(0, 10, (64,), generator=gen)
    model, loss = small_cnn(), nn.CrossEntropyLoss()
    ours = lanczos(HessianOperator(Objective(model, loss, (x, y))), k=1, tol=1e-5, seed=0)
    assert ours.converged

    torch.manual_seed(0)  # PyHessian draws from the global generator
    reference = pyhessian.hessian(model, loss, data=(x, y), cuda=False)
    tight, _ = reference.eigenvalues(maxIter=1000, tol=1e-7, top_n=1)
    assert abs(tight[0] - float(ours.eigenvalues[0])) < 1e-3 * float(ours.eigenvalues[0])
    default, _ = reference.eigenvalues(maxIter=100, tol=1e-3, top_n=1)  # its own stopping rule
    assert abs(default[0] - float(ours.eigenvalues[0])) < 2e-2 * float(ours.eigenvalues[0])

    samples = torch.tensor(reference.trace(maxIter=400, tol=0.0), dtype=torch.float64)
    theirs_mean, theirs_se = float(samples.mean()), float(samples.std() / len(samples) ** 0.5)
    trace = hutchinson(HessianOperator(Objective(model, loss, (x, y))), 400, seed=0)
    assert abs(trace.estimate - theirs_mean) < 4 * (trace.stderr**2 + theirs_se**2) ** 0.5
