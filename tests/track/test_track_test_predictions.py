"""Per-example test outcomes at each measurement: packed, read back, equal to the recorded accuracy and to
an independent count, and usable for a paired comparison of two models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sharpscope.errors import DataError
from sharpscope.experiments.statistics import paired_accuracy
from sharpscope.io.predictions import pack_correct, unpack_correct
from sharpscope.io.rundir import RunDirectory
from sharpscope.track import SharpnessTracker, TrainConfig, train


def model_and_data(seed: int) -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3))
    gen = torch.Generator().manual_seed(100)
    return (model, (torch.randn(20, 5, generator=gen), torch.randint(0, 3, (20,), generator=gen)),
            (torch.randn(37, 5, generator=gen), torch.randint(0, 3, (37,), generator=gen)))


def test_recorded_outcomes_match_the_accuracy_and_an_independent_count() -> None:
    records = []
    for seed in (0, 1):
        model, train_data, (xt, yt) = model_and_data(seed)
        tracker = SharpnessTracker(train_data, nn.CrossEntropyLoss(), every=1, test_data=(xt, yt), batch_size=8,
                                   test_predictions=True)
        rec = tracker.measure(0, model)
        correct = unpack_correct(rec.test_correct)
        expected = (model(xt).argmax(dim=1) == yt).numpy()
        assert np.array_equal(correct, expected)  # batches of 8 over 37 examples, in order
        assert correct.mean() == pytest.approx(rec.test_acc, abs=1e-12)
        records.append(rec)
    a, b = (unpack_correct(r.test_correct) for r in records)
    assert paired_accuracy(a, b).estimate == pytest.approx(records[0].test_acc - records[1].test_acc, abs=1e-12)


def test_no_outcomes_without_class_scores_or_when_not_asked() -> None:
    model = nn.Linear(5, 1)
    x, y = torch.randn(10, 5), torch.randn(10, 1)
    rec = SharpnessTracker((x, y), nn.MSELoss(), every=1, test_data=(x, y), test_predictions=True).measure(0, model)
    assert rec.test_correct is None
    model, train_data, test = model_and_data(0)
    assert "test_correct" not in SharpnessTracker(train_data, nn.CrossEntropyLoss(), every=1,
                                                  test_data=test).measure(0, model).to_json()


def test_a_training_run_stores_them_in_its_records(tmp_path: Path) -> None:
    cfg = TrainConfig(model={"name": "mlp", "kwargs": {"in_features": 40, "widths": [8], "num_classes": 10}},
                      data="mnist1d", n=64, test_data="mnist1d", test_n=50, loss="ce", steps=2, measure_every=2,
                      test_predictions=True, checkpoint_every=2)
    train(cfg, tmp_path / "run")
    rows = [r for r in RunDirectory(tmp_path / "run").read_metrics() if r.get("kind") == "measurement"]
    assert [len(unpack_correct(r["test_correct"])) for r in rows] == [50, 50]


def test_malformed_entries_fail_in_one_line() -> None:
    assert unpack_correct(pack_correct([])).size == 0
    for bad in ({"n": 9, "bits": "sA=="}, {"n": 3, "bits": "not base64!"}, {"n": "3", "bits": ""}):
        with pytest.raises(DataError):
            unpack_correct(bad)
