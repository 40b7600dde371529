"""The tracker as a loop over quantities, and the one probe interface for whole and sharded models.

A quantity added to the loop appears in the record with its own cost entry; the record's keys follow
the quantities' order; the whole and the sharded views of one float64 model (one process, no process
group: the sharded view then holds whole vectors) give the same loss, accuracy and gradient norm.
"""

from __future__ import annotations

import math
from typing import ClassVar

import pytest
import torch
from torch import nn

from sharpscope.curvature import Objective
from sharpscope.curvature.settings import CurvatureSettings
from sharpscope.track.probe_view import ShardedView, WholeView, examples_view
from sharpscope.track.quantities import Quantity, Reading
from sharpscope.track.tracker import SharpnessTracker

pytestmark = pytest.mark.usefixtures("single_thread")


def setting() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    gen = torch.Generator().manual_seed(1)
    return model, torch.randn(20, 4, generator=gen, dtype=torch.float64), torch.randint(0, 3, (20,), generator=gen)


class ParameterNorm(Quantity):
    """``param_norm = ‖θ‖``: a quantity defined outside the tracker."""

    timer: ClassVar[str | None] = "param_norm_seconds"

    def measure(self, reading: Reading) -> int:
        reading.record["param_norm"] = float(reading.probe.objective.parameter_vector().norm())
        return 0


class WithNorm(SharpnessTracker):
    def quantities(self) -> list[Quantity]:
        return [*super().quantities(), ParameterNorm()]


def test_a_new_quantity_is_one_more_object_in_the_loop() -> None:
    model, x, y = setting()
    rec = WithNorm((x, y), nn.CrossEntropyLoss(), every=1, curvature=CurvatureSettings(k=1)).measure(0, model)
    expected = math.sqrt(sum(float(p.detach().double().square().sum()) for p in model.parameters()))
    assert rec["param_norm"] == pytest.approx(expected, rel=1e-12)
    assert "param_norm_seconds" in rec["cost"] and list(rec)[-3:] == ["param_norm", "cost", "settings"]


def test_the_record_follows_the_order_of_the_quantities() -> None:
    model, x, y = setting()
    tracker = SharpnessTracker((x, y), nn.CrossEntropyLoss(), every=1, curvature=CurvatureSettings(k=2), trace=True,
                               test_data=(x[:7], y[:7]), alignment=True)
    names = [type(q).__name__ for q in tracker.quantities()]
    assert names == ["LossAccuracy", "TopEigenvalues", "Trace", "GradientNorm", "GradientAlignment", "SamBatch",
                     "Thresholds"]
    rec = tracker.measure(0, model)
    assert list(rec) == ["kind", "step", "train_loss", "train_acc", "test_loss", "test_acc", "warm_start", "eigenvalues",
                         "residuals", "converged", "hvps", "seconds", "lanczos_steps", "trace", "grad_norm",
                         "alignment", "thresholds", "cost", "settings"]
    assert list(rec["cost"]) == ["eval_seconds", "grad_seconds", "hvps", "seconds"]
    assert rec["cost"]["hvps"] == rec["hvps"] + rec["trace"]["hvps"]


def test_whole_and_sharded_views_agree_on_one_process() -> None:
    model, x, y = setting()
    objective = Objective(model, nn.CrossEntropyLoss(), (x, y), batch_size=6, validate=False)
    whole = WholeView(objective, CurvatureSettings().hessian(objective))
    sharded = ShardedView(objective)
    (lw, aw), (ls, as_) = whole.evaluate(), sharded.evaluate()
    assert ls == pytest.approx(lw, rel=1e-12) and as_ == pytest.approx(aw, rel=1e-12)
    grad, norm = whole.gradient()
    assert grad is not None and norm == pytest.approx(float(grad.norm()), rel=1e-15)
    assert sharded.gradient() == (None, pytest.approx(norm, rel=1e-12))
    assert {n: p.shape for n, p in whole.local_params().items()} == {
        n: p.shape for n, p in sharded.local_params().items()}
    assert whole.product_settings(CurvatureSettings())["hvp_mode"] != "finite difference (sharded)"
    assert sharded.product_settings(CurvatureSettings())["hvp_mode"] == "finite difference (sharded)"
    test = examples_view(Objective(model, nn.CrossEntropyLoss(), (x[:5], y[:5]), validate=False), sharded=False)
    correct = (model(x[:5]).argmax(1) == y[:5]).double().mean().item()
    assert test.evaluate()[1] == pytest.approx(correct, rel=1e-12)
