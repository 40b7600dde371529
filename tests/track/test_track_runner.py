"""The runner: the full-batch objective, divergence, early stop, exact resume after a crash, configs and recipes."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from sharpscope.curvature import Objective
from sharpscope.curvature.settings import RUN_DEFAULTS
from sharpscope.data import MissingDataError
from sharpscope.errors import ConfigError
from sharpscope.experiments import RECIPES, SCALES, get_recipe, parse_overrides
from sharpscope.io.jsonsafe import without_timings
from sharpscope.losses import get_loss
from sharpscope.track import RunDirectory, TrainConfig, build_data, build_model, train

pytestmark = pytest.mark.usefixtures("single_thread")


def tiny(**overrides: Any) -> TrainConfig:
    """MNIST-1D, 64 examples in uneven physical batches (24, 24, 16), a 40-16-10 MLP."""
    base = TrainConfig(model={"name": "mlp", "kwargs": {"in_features": 40, "num_classes": 10, "widths": [16],
                                                         "activation": "tanh"}},
                       data="mnist1d", n=64, test_data="mnist1d", test_n=32, physical_batch_size=24, steps=12,
                       measure_every=3, checkpoint_every=4, curvature=RUN_DEFAULTS.replace(k=2), loss="mse",
                       optimizer_kwargs={"lr": 0.5})
    return base.with_overrides(overrides)




def test_a_full_batch_step_descends_the_tracked_objective(tmp_path: Path) -> None:
    """θ_1 = θ_0 − η ∇L(θ_0) with ∇L the example-weighted mean over uneven physical batches."""
    cfg = tiny(steps=1, dtype="float64", measure_every=1)
    summary = train(cfg, tmp_path / "run")
    model0, _ = build_model(cfg, torch.device("cpu"), torch.float64)
    data, _ = build_data(cfg)
    objective = Objective(model0, get_loss("mse"), (data.x.double(), data.y), validate=False)
    expected = objective.parameter_vector() - 0.5 * objective.gradient()
    raw = RunDirectory(tmp_path / "run").load_checkpoint()
    assert raw is not None and raw.extra["step"] == 1
    got = torch.cat([raw.state_dict[name].reshape(-1) for name in objective.names])
    assert torch.allclose(got, expected, rtol=1e-12, atol=1e-14)
    records = RunDirectory(tmp_path / "run").read_metrics()
    assert records[0]["grad_norm"] == pytest.approx(float(objective.gradient().norm()), rel=1e-12)
    assert records[0]["settings"]["num_batches"] == 3 and records[0]["settings"]["probe_examples"] == 64
    assert summary.status == "completed" and [r["step"] for r in records] == [0, 1]


def test_a_non_finite_loss_stops_the_run_cleanly(tmp_path: Path) -> None:
    cfg = tiny(**{"model.kwargs.activation": "relu", "optimizer_kwargs.lr": 50.0, "k": 1})
    rng = torch.get_rng_state()
    summary = train(cfg, tmp_path / "run")
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's global RNG is untouched
    run = RunDirectory(tmp_path / "run")
    step = summary.diverged_at_step
    assert summary.status == "diverged" and 0 < step < cfg.steps and summary.step == step
    assert summary.nonfinite_loss is not None and not math.isfinite(summary.nonfinite_loss)
    records = run.read_metrics()  # strict JSON throughout
    events = [r for r in records if r.get("kind") == "diverged"]
    assert len(events) == 1 and events[0]["step"] == step
    assert max(r["step"] for r in records) == step
    raw = run.load_checkpoint()
    assert raw is not None and raw.extra["step"] == step  # the run directory stays usable
    assert json.loads(run.summary_path.read_text())["status"] == "diverged"
    again = train(cfg, tmp_path / "run")  # the same command again: nothing is redone
    assert again.already_complete and run.read_metrics() == records


def test_training_stops_at_the_accuracy_goal_with_a_final_measurement(tmp_path: Path) -> None:
    cfg = tiny(loss="ce", steps=200, measure_every=50, stop_at_train_acc=0.3, test_data=None, k=1)
    summary = train(cfg, tmp_path / "run")
    run = RunDirectory(tmp_path / "run")
    stop = summary.step
    assert summary.status == "reached_train_acc" and 0 < stop < 50
    assert [r["step"] for r in run.read_metrics()] == [0, stop]
    assert summary.final["train_acc"] >= 0.3 and run.latest_checkpoint()[0] == stop


@pytest.mark.parametrize("batch_size", [16, None], ids=["mini-batch", "full-batch"])
def test_training_stops_at_the_loss_goal_where_the_unstopped_run_first_reaches_it(tmp_path: Path,
                                                                                  batch_size: int | None) -> None:
    """The stopped run is the unstopped run cut at the first measurement whose training loss is at or below the goal."""
    cfg = tiny(loss="ce", steps=12, measure_every=1, test_data=None, k=1, batch_size=batch_size)
    train(cfg, tmp_path / "full")
    losses = [r["train_loss"] for r in RunDirectory(tmp_path / "full").read_metrics()]
    goal = losses[5]
    first = next(i for i, loss in enumerate(losses) if loss <= goal)
    summary = train(cfg.with_overrides({"stop_at_train_loss": goal}), tmp_path / "stopped")
    stopped = RunDirectory(tmp_path / "stopped").read_metrics()
    assert summary.status == "reached_train_loss" and 0 < first <= 5
    assert [r["train_loss"] for r in stopped][:first + 1] == losses[:first + 1]
    assert stopped[-1]["train_loss"] <= goal and all(r["train_loss"] > goal for r in stopped[:first])
    with pytest.raises(ConfigError, match="stop_at_train_loss"):
        tiny(stop_at_train_loss=-1.0)


class Crash(Exception):
    pass


@pytest.mark.parametrize("overrides", [
    {"optimizer": "sgd", "optimizer_kwargs": {"lr": 0.1, "momentum": 0.9}, "batch_size": 20, "trace": True,
     "trace_matvecs": 8, "loss": "ce"},
    {"optimizer": "sam", "optimizer_kwargs": {"lr": 0.3, "rho": 0.05}, "loss": "mse-mean"},
    {"optimizer": "sparse-sam", "optimizer_kwargs": {"lr": 0.3, "rho": 0.05, "mask": "dynamic", "sparsity": 0.5,
                                                     "update_interval": 2, "total_steps": 12}},
    {"optimizer": "rs", "optimizer_kwargs": {"lr": 0.3, "lr_perturb": 0.6, "rho": 0.05, "eps0": 1e9}},
    {"optimizer": "sa", "optimizer_kwargs": {"lr": 0.3, "rho": 0.05, "eps0": 1e9, "batch_size": 4},
     "batch_size": 20},
    {"optimizer": "sa", "optimizer_kwargs": {"lr": 0.3, "rho": 0.05, "eps0": 1e9, "perturbation_batch": "same",
                                             "difference": True, "batch_scaling": "rho+lr"}, "batch_size": 20},
    {"optimizer": "sgd", "optimizer_kwargs": {"lr": 0.1}, "batch_size": 20, "loss": "ce", "label_noise": 0.3},
], ids=["minibatch-sgd-momentum", "fullbatch-sam", "sparse-sam-dynamic", "fullbatch-rs", "minibatch-sa",
        "minibatch-sa-same-batch", "label-noise-sgd"])
def test_a_crashed_run_resumes_to_exactly_the_uninterrupted_records(tmp_path: Path, overrides: dict) -> None:
    cfg = tiny(**overrides)
    reference = train(cfg, tmp_path / "ref")

    def crash_at_7(step: int, total: int, record: dict | None) -> None:
        if step == 7:
            raise Crash

    with pytest.raises(Crash):
        train(cfg, tmp_path / "run", progress=crash_at_7)
    run = RunDirectory(tmp_path / "run")
    steps = lambda recs: [r["step"] for r in recs if r.get("kind", "measurement") == "measurement"]  # noqa: E731
    assert steps(run.read_metrics()) == [0, 3, 6] and run.latest_checkpoint()[0] == 4
    resumed = train(cfg, tmp_path / "run")
    assert resumed.resumed_from_step == 4
    ref_records = RunDirectory(tmp_path / "ref").read_metrics()
    records = run.read_metrics()
    assert steps(records) == [0, 3, 6, 9, 12]
    assert without_timings(records) == without_timings(ref_records)  # SAM batch records included, once each
    assert [r["warm_start"] for r in records if "warm_start" in r] == [False, True, True, True, True]
    assert without_timings(resumed.final) == without_timings(reference.final)


def test_configs_overrides_and_recipes() -> None:
    assert parse_overrides(["optimizer_kwargs.lr=0.02", "data=mnist1d", "model.kwargs.widths=[8, 8]", "n=null",
                            "trace=true", "x=a=b"]) == {
        "optimizer_kwargs.lr": 0.02, "data": "mnist1d", "model.kwargs.widths": [8, 8], "n": None, "trace": True,
        "x": "a=b"}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_overrides(["steps"])
    cfg = get_recipe("eos-gd", "smoke", {"optimizer_kwargs.lr": 0.02, "model.kwargs.widths": [8], "steps": 3})
    assert cfg.optimizer_kwargs == {"lr": 0.02} and cfg.model["kwargs"]["widths"] == [8] and cfg.steps == 3
    assert (cfg.recipe, cfg.scale, cfg.loss, cfg.optimizer) == ("eos-gd", "smoke", "mse", "gd")
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown config key 'stpes'"):
        cfg.with_overrides({"stpes": 3})
    with pytest.raises(ConfigError, match="measure_every must be a positive integer"):
        cfg.with_overrides({"measure_every": 0})
    with pytest.raises(ConfigError, match="unknown recipe"):
        get_recipe("nope")
    with pytest.raises(ConfigError, match="unknown scale"):
        get_recipe("eos-gd", "huge")
    for name in RECIPES:
        for scale in SCALES:
            try:
                c = get_recipe(name, scale)
            except MissingDataError:  # a recipe that needs a file of the data root says so without it
                continue
            assert c.curvature.hvp_mode != "auto"  # records reproducible to the bit
    assert get_recipe("eos-momentum", "smoke").optimizer_kwargs["momentum"] == 0.9
    sam = get_recipe("sam-edge", "smoke")
    assert (sam.optimizer, sam.loss, sam.batch_size) == ("sam", "mse-mean", None)
    assert get_recipe("demo", "smoke").batch_size is not None


def test_fresh_label_noise_changes_the_run_and_is_drawn_per_step(tmp_path: Path) -> None:
    """label_noise moves the weights away from the noiseless run; two seeds draw different noise."""
    base = {"optimizer": "sgd", "optimizer_kwargs": {"lr": 0.1}, "batch_size": 20, "loss": "ce", "steps": 6,
            "measure_every": 6, "test_data": None}
    finals = {}
    for name, extra in (("clean", {}), ("noisy", {"label_noise": 0.5})):
        finals[name] = train(tiny(**base, **extra), tmp_path / name).final["train_loss"]
    assert finals["clean"] != finals["noisy"]
    with pytest.raises(ConfigError, match="batch_size"):
        tiny(label_noise=0.2, loss="ce")
