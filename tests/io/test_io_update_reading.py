"""The typed update-curvature record: the tracker's records read and written back unchanged, with their cost."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sharpscope.curvature.settings import CurvatureSettings
from sharpscope.errors import DataError
from sharpscope.io.records import UpdateReading
from sharpscope.track.tracker import SharpnessTracker

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize("method", ["hvp", "fd"])
def test_the_trackers_update_records_round_trip(method: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 1)).double()
    x, y = torch.randn(16, 3, dtype=torch.float64), torch.randn(16, 1, dtype=torch.float64)
    opt, loss = torch.optim.Adam(model.parameters(), lr=0.01), nn.MSELoss()
    records: list[UpdateReading] = []
    tracker = SharpnessTracker((x, y), loss, every=100, curvature=CurvatureSettings(k=1), update_curvature=method,
                               sink=records.append)
    for step in range(3):
        tracker.before_step(step, model)
        opt.zero_grad()
        loss(model(x), y).backward()
        opt.step()
        tracker.after_step(step, model, opt)
    assert [type(r) for r in records] == [UpdateReading] * 3 and tracker.last_update is records[-1]
    for r in records:
        stored = r.to_json()
        typed = UpdateReading.from_json(stored)
        assert typed == r and typed.to_json() == stored and list(typed.to_json()) == list(stored)
        assert (typed.hvps, typed.forwards) == ((1, 0) if method == "hvp" else (0, 3))
        assert typed.method == method and typed.kappa == stored["kappa"] and math.isfinite(typed.kappa or math.nan)
        assert (typed.fd is not None) == (method == "fd")


def test_a_record_of_another_kind_is_not_an_update_reading() -> None:
    with pytest.raises(DataError, match="not a update_curvature record"):
        UpdateReading.from_json({"kind": "alignment", "step": 1})
