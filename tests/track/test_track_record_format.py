"""The records a training run stores, key by key: the typed writers keep the on-disk format.

The tracker and the runner make typed records (:mod:`sharpscope.io.records`) and store ``record.to_json()``.
Each kind's keys, in their stored order, are pinned here as the dict-building writers stored them (with
None values kept: a failed Lanczos run writes ``"eigenvalues": null``); every stored line reads back as
its typed record and writes out unchanged; ``train`` returns the ``RunSummary`` it stored.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from sharpscope.curvature.settings import RUN_DEFAULTS, CurvatureSettings
from sharpscope.data import MissingDataError
from sharpscope.io.records import Divergence, Measurement, RunSummary, record_kind, typed_record
from sharpscope.track import RunDirectory, SharpnessTracker, TrainConfig, train

pytestmark = pytest.mark.usefixtures("single_thread")

MLP = {"name": "mlp", "kwargs": {"in_features": 40, "num_classes": 10, "widths": [6], "activation": "tanh"}}
CHECKSUMS = ("previous_sha256", "record_sha256")
LOSSES = ["train_loss", "train_acc"]
LANCZOS = ["warm_start", "eigenvalues", "residuals", "converged", "hvps", "seconds", "lanczos_steps"]
TAIL = ["thresholds", "cost", "settings"]
UPDATE = ["kind", "step", "method", "kappa", "kappa_preconditioned", "uHu", "uPu", "update_norm", "cost"]

RUNS = {
    "adam": ({"optimizer": "adam", "optimizer_kwargs": {"lr": 0.01}, "preconditioned": True, "alignment": True,
              "trace": True, "update_curvature": "hvp", "test_data": "mnist1d", "test_n": 16, "test_predictions": True,
              "loss": "ce"},
             {"measurement": {  # no Adam state at step 0: the preconditioned fields are None, the reason in errors
                 ("kind", "step", *LOSSES, "test_loss", "test_acc", "test_correct", *LANCZOS, "preconditioned_eigenvalues",
                  "preconditioned_residuals", "preconditioned_hvps", "trace", "grad_norm", "alignment", *TAIL, *extra)
                 for extra in ((), ("errors",))},
              "update_curvature": {(*UPDATE, "thresholds", "settings")},
              "alignment": {("kind", "step", "update_norm", "update_cos", "update_fraction")}}),
    "sam": ({"optimizer": "sam", "optimizer_kwargs": {"lr": 0.1, "rho": 0.05}, "batch_size": 12, "batch_sharpness": True,
             "update_curvature": "fd", "update_every": 2},
            {"measurement": {("kind", "step", *LOSSES, *LANCZOS, "grad_norm", *TAIL)},
             "update_curvature": {(*UPDATE, "fd", "thresholds", "settings")},
             "sam_batch": {("kind", "step", "batch_grad_norm", "sam_edge_batch", "derived_for", "batch_sharpness")}}),
    "diverged": ({"optimizer_kwargs": {"lr": 1e6}, "steps": 12},
                 {"measurement": {("kind", "step", *LOSSES, *LANCZOS, "grad_norm", *TAIL),  # Lanczos failed: no steps
                                  ("kind", "step", *LOSSES, *LANCZOS[:-1], "grad_norm", *TAIL, "errors")},
                  "diverged": {("kind", "step", "train_loss", "train_acc", "batch")}}),
}
SUMMARY_KEYS = ["status", "step", "steps_requested", "recipe", "scale", "diverged_at_step", "nonfinite_loss",
                "measurements", "final", "max_sharpness", "first_step_at_or_above_edge", "hvps_total",
                "measure_seconds_total", "update_curvature", "session", "data", "sharding", "init", "checkpoint",
                "run_dir"]


def config(**over: object) -> TrainConfig:
    base = {"model": MLP, "data": "mnist1d", "n": 24, "physical_batch_size": 12, "steps": 3, "measure_every": 2,
            "checkpoint_every": 3, "loss": "mse", "optimizer_kwargs": {"lr": 0.5},
            "curvature": RUN_DEFAULTS.replace(k=2, hvp_mode="rev-rev", trace_matvecs=6)}
    return TrainConfig(**{**base, **over})  # type: ignore[arg-type]


@pytest.mark.parametrize("name", list(RUNS))
def test_each_stored_record_keeps_its_keys_and_reads_back_unchanged(name: str, tmp_path: Path) -> None:
    over, kinds = RUNS[name]
    try:
        summary = train(config(**over), tmp_path / name)
    except MissingDataError as e:
        pytest.skip(str(e))
    run = RunDirectory(tmp_path / name)
    lines = [json.loads(line) for line in run.metrics_path.read_text(encoding="utf-8").splitlines()]
    stored = [{k: v for k, v in line.items() if k not in CHECKSUMS} for line in lines]
    seen: dict[str, set[tuple[str, ...]]] = {}
    for record in stored:
        seen.setdefault(record_kind(record), set()).add(tuple(record))
        typed = typed_record(record)
        assert typed is not None and typed.to_json() == record and list(typed.to_json()) == list(record)
    assert seen == kinds
    assert isinstance(summary, RunSummary) and summary.to_json() == run.read_summary()
    assert list(summary.to_json()) == SUMMARY_KEYS
    final = summary.final_measurement
    last = Measurement.from_json([r for r in stored if record_kind(r) == "measurement"][-1])
    assert final is not None and summary.to_json()["final"] == last.summary_part() and final.step == last.step
    again = train(config(**over), tmp_path / name)  # finished: the stored summary, marked
    assert again.already_complete is True and again.to_json() == {**summary.to_json(), "already_complete": True}
    if name == "diverged":
        event = typed_record(stored[-1])
        assert isinstance(event, Divergence) and summary.diverged_at_step == event.step
        assert event.train_loss is not None and not math.isfinite(event.train_loss)
        failed = [Measurement.from_json(r) for r in stored if "errors" in r]
        assert failed and all(m.eigenvalues is None and "eigenvalues" in (m.errors or {}) for m in failed)


def test_a_run_directory_takes_the_trackers_typed_records_as_its_sink(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    x, y = torch.randn(12, 3, dtype=torch.float64), torch.randn(12, 1, dtype=torch.float64)
    run = RunDirectory(tmp_path / "mine")
    tracker = SharpnessTracker((x, y), nn.MSELoss(), every=1, curvature=CurvatureSettings(k=1), sink=run.append_metric)
    made = [tracker.measure(step, model) for step in (0, 1)]
    stored = [{k: v for k, v in r.items() if k not in CHECKSUMS} for r in run.read_metrics()]
    assert stored == [m.to_json() for m in made] and [Measurement.from_json(r) for r in stored] == made
