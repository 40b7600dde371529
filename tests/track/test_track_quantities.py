"""The tracker as a loop over quantities, and the one probe interface for whole and sharded models.

A quantity added to the loop writes its field of the record, with its own cost entry (a name that is not a
field of the record is an error); the record's keys follow the quantities' order; the whole and the sharded
views of one float64 model (one process, no process group: the sharded view then holds whole vectors) give
the same loss, accuracy and gradient norm.
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


class HandGradientNorm(Quantity):
    """``grad_norm = ‖∇L‖`` of the cross-entropy on ``(x, y)`` by one ``torch.autograd.grad``: a quantity defined
    outside the tracker (``name`` is the field it writes)."""

    timer: ClassVar[str | None] = "hand_grad_seconds"

    def __init__(self, data: tuple[torch.Tensor, torch.Tensor], name: str) -> None:
        self.data, self.name = data, name

    def measure(self, reading: Reading) -> int:
        reading.fields[self.name] = cross_entropy_grad_norm(reading.probe.objective.model, *self.data)
        return 0


def cross_entropy_grad_norm(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.enable_grad():
        loss = nn.CrossEntropyLoss()(model(x), y)
        return math.sqrt(sum(float(g.square().sum()) for g in torch.autograd.grad(loss, list(model.parameters()))))


class WithNorm(SharpnessTracker):
    name = "grad_norm"

    def quantities(self) -> list[Quantity]:
        return [*super().quantities(), HandGradientNorm(self.probe_data, self.name)]


def test_a_new_quantity_is_one_more_object_in_the_loop() -> None:
    model, x, y = setting()
    tracker = WithNorm((x, y), nn.CrossEntropyLoss(), every=1, curvature=CurvatureSettings(k=1), grad_norm=False)
    rec = tracker.measure(0, model)
    builtin = SharpnessTracker((x, y), nn.CrossEntropyLoss(), every=1, curvature=CurvatureSettings(k=1)).measure(0, model)
    assert rec.grad_norm == pytest.approx(builtin.grad_norm, rel=1e-12)  # the tracker's own gradient, batched
    assert "hand_grad_seconds" in rec.cost and list(rec.to_json())[-3:] == ["grad_norm", "cost", "settings"]


def test_a_quantity_writing_a_name_the_record_lacks_is_an_error() -> None:
    model, x, y = setting()
    tracker = WithNorm((x, y), nn.CrossEntropyLoss(), every=1, curvature=CurvatureSettings(k=1))
    tracker.name = "param_norm"
    with pytest.raises(TypeError, match="Measurement has no field 'param_norm'"):
        tracker.measure(0, model)


def test_the_record_follows_the_order_of_the_quantities() -> None:
    model, x, y = setting()
    tracker = SharpnessTracker((x, y), nn.CrossEntropyLoss(), every=1, curvature=CurvatureSettings(k=2), trace=True,
                               test_data=(x[:7], y[:7]), alignment=True)
    names = [type(q).__name__ for q in tracker.quantities()]
    assert names == ["LossAccuracy", "TopEigenvalues", "Trace", "GradientNorm", "GradientAlignment", "SamStep",
                     "Thresholds"]
    rec = tracker.measure(0, model)
    assert list(rec.to_json()) == ["kind", "step", "train_loss", "train_acc", "test_loss", "test_acc", "warm_start", "eigenvalues",
                         "residuals", "converged", "hvps", "seconds", "lanczos_steps", "trace", "grad_norm",
                         "alignment", "thresholds", "cost", "settings"]
    assert list(rec.cost) == ["eval_seconds", "grad_seconds", "hvps", "seconds"]
    assert rec.cost["hvps"] == rec.hvps + rec.trace["hvps"]


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
    assert whole.product_settings()["hvp_mode"] != "finite difference (sharded)"
    assert sharded.product_settings()["hvp_mode"] == "finite difference (sharded)"
    test = examples_view(Objective(model, nn.CrossEntropyLoss(), (x[:5], y[:5]), validate=False), sharded=False)
    correct = (model(x[:5]).argmax(1) == y[:5]).double().mean().item()
    assert test.evaluate()[1] == pytest.approx(correct, rel=1e-12)
