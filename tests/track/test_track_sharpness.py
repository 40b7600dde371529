"""The tracker's sharpness measures: the library's values, seeded by step, errors kept to their own key."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sharpscope.curvature import CurvatureSettings, Objective
from sharpscope.errors import ConfigError
from sharpscope.io.jsonsafe import dumps
from sharpscope.losses import mse
from sharpscope.measures import SharpnessSettings, measure
from sharpscope.track import SharpnessTracker
from sharpscope.track.tags import flatten_record
from sharpscope.track.tracker import step_seed

pytestmark = pytest.mark.usefixtures("single_thread")


def problem() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40, 5, generator=gen, dtype=torch.float64)
    y = torch.randn(40, 1, generator=gen, dtype=torch.float64)
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 1)).double(), x, y


def test_tracker_records_the_measures_as_the_library_computes_them() -> None:
    model, x, y = problem()
    settings = SharpnessSettings(rho=0.1, m=10, steps=5, samples=4)
    tracker = SharpnessTracker((x, y), mse, every=1, curvature=CurvatureSettings(k=1), threshold=None,
                               sharpness=("worst", "average", "keskar"), sharpness_settings=settings, seed=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rec = tracker.measure(7, model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    objective = Objective(model, mse, (x, y))
    seeded = SharpnessSettings(rho=0.1, m=10, steps=5, samples=4, seed=step_seed(3, 7, 4))
    assert rec.sharpness["worst"]["value"] == pytest.approx(measure("worst", objective, seeded).value, rel=1e-12)
    assert rec.sharpness["average"]["value"] == pytest.approx(measure("average", objective, seeded).value,
                                                                 rel=1e-12)
    assert rec.sharpness["worst"]["details"]["sets"] == 4 and "per_set" not in rec.sharpness["worst"]["details"]
    assert rec.settings["sharpness"] == ["worst", "average", "keskar"] and rec.cost["sharpness_seconds"] > 0
    assert rec.errors is None
    dumps(rec.to_json())
    assert "sharpness.keskar.value" in flatten_record(rec)


def test_a_failing_measure_records_its_error_and_the_rest_goes_on() -> None:
    model, x, y = problem()
    tracker = SharpnessTracker((x, y), mse, every=1, threshold=None, sharpness=("worst", "average"),
                               sharpness_settings=SharpnessSettings(m=100))  # sets of 100 examples from 40
    rec = tracker.measure(0, model)
    assert rec.sharpness == {"worst": None, "average": None}
    assert "m=100 exceeds every probe batch" in rec.errors["sharpness.worst"]
    assert rec.eigenvalues is not None


def test_unknown_measures_are_refused_when_the_tracker_is_made() -> None:
    _, x, y = problem()
    with pytest.raises(ConfigError, match="sharpness must name measures among"):
        SharpnessTracker((x, y), mse, every=1, sharpness=("worst", "flat"))
