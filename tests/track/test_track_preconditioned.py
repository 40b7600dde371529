"""The tracker's preconditioned sharpness λ(P^{-1/2} H P^{-1/2}) for Adam, against dense float64 answers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from sharpscope.curvature import CurvatureSettings, Objective, exact_hessian
from sharpscope.errors import ConfigError
from sharpscope.io.jsonsafe import without_timings
from sharpscope.io.records import Measurement, RunRecord, RunSummary
from sharpscope.losses import mse
from sharpscope.optim import SAM
from sharpscope.plots.trajectory import sharpness_data, sharpness_figure
from sharpscope.thresholds import adam_edge
from sharpscope.track import RunDirectory, SharpnessTracker, TrainConfig, train

pytestmark = pytest.mark.usefixtures("single_thread")

NEW_KEYS = ("preconditioned_eigenvalues", "preconditioned_residuals", "preconditioned_hvps")


def problem() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A 5-4-2 tanh MLP in float64 (34 parameters) on 40 random examples."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40, 5, generator=gen, dtype=torch.float64)
    y = torch.randn(40, 2, generator=gen, dtype=torch.float64)
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    return model, x, y


def adam_steps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, kind: str, steps: int) -> torch.optim.Optimizer:
    """``steps`` full-batch steps of Adam, AdamW or SAM over Adam (eps = 1e-4 so that ε enters P visibly)."""
    kwargs: dict[str, Any] = {"lr": 0.01, "betas": (0.9, 0.99), "eps": 1e-4}
    if kind == "sam-adam":
        opt: torch.optim.Optimizer = SAM(model.parameters(), torch.optim.Adam, rho=0.02, **kwargs)
    else:
        opt = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[kind](model.parameters(), **kwargs)
    for _ in range(steps):
        opt.zero_grad()
        mse(model(x), y).backward()
        if isinstance(opt, SAM):
            opt.first_step(zero_grad=True)
            mse(model(x), y).backward()
            opt.second_step(zero_grad=True)
        else:
            opt.step()
    return opt


def dense_preconditioned(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                         adam: torch.optim.Optimizer) -> np.ndarray:
    """``eigvalsh(D^{-1/2} H D^{-1/2})`` descending, ``D = sqrt(v / (1 − β₂^t)) + ε`` from Adam's state."""
    objective = Objective(model, mse, (x, y))
    hess = exact_hessian(objective).double()
    group = adam.param_groups[0]
    parts = []
    for p in objective.params.values():
        state = adam.state[p]
        v_hat = state["exp_avg_sq"].double() / (1 - group["betas"][1] ** float(state["step"]))
        parts.append((v_hat.sqrt() + group["eps"]).reshape(-1))
    s = torch.cat(parts).rsqrt()
    return torch.linalg.eigvalsh(s[:, None] * hess * s[None, :]).flip(0).numpy()


def tracker(**kwargs: Any) -> Callable[[torch.Tensor, torch.Tensor], SharpnessTracker]:
    return lambda x, y: SharpnessTracker((x, y), mse, every=1,
                                         curvature=CurvatureSettings(k=2, tol=1e-10, hvp_mode="rev-rev"), seed=4,
                                         **kwargs)


@pytest.mark.parametrize("kind", ["adam", "adamw", "sam-adam"])
def test_recorded_preconditioned_eigenvalues_equal_the_dense_ones(kind: str) -> None:
    model, x, y = problem()
    opt = adam_steps(model, x, y, kind, steps=4)
    adam = opt.base_optimizer if isinstance(opt, SAM) else opt
    expected = dense_preconditioned(model, x, y, adam)
    rec = tracker(preconditioned=True)(x, y).measure(4, model, opt)
    assert list(rec.preconditioned_eigenvalues) == pytest.approx(expected[:2].tolist(), rel=1e-8)
    assert max(rec.preconditioned_residuals) < 1e-8 and rec.preconditioned_hvps > 0
    assert rec.cost["hvps"] == rec.hvps + rec.preconditioned_hvps
    assert rec.settings["preconditioned"] == "adam" and rec.errors is None
    # the raw spectrum is another operator: with ε = 1e-4 and small v̂ the two differ by orders of magnitude
    raw = np.linalg.eigvalsh(exact_hessian(Objective(model, mse, (x, y))).numpy())[::-1]
    assert list(rec.eigenvalues) == pytest.approx(raw[:2].tolist(), rel=1e-8)
    assert rec.preconditioned_eigenvalues[0] > 10 * rec.eigenvalues[0]

    plain = tracker()(x, y).measure(4, model, opt)  # preconditioned=False: the rest of the record is unchanged
    stored = plain.to_json()
    assert not set(NEW_KEYS) & set(stored) and plain.settings["preconditioned"] is None
    strip = {k: v for k, v in rec.to_json().items() if k not in NEW_KEYS}
    strip["cost"] = dict(strip["cost"], hvps=rec.hvps)
    strip["settings"] = dict(strip["settings"], preconditioned=None)
    assert list(strip) == list(stored) and without_timings(strip) == without_timings(stored)


def test_before_the_first_adam_step_the_value_is_none_with_a_reason() -> None:
    model, x, y = problem()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    rec = tracker(preconditioned=True)(x, y).measure(0, model, opt)
    assert all(getattr(rec, key) is None for key in NEW_KEYS) and set(NEW_KEYS) <= set(rec.to_json())
    assert "no state yet" in rec.errors["preconditioned_eigenvalues"]
    assert rec.eigenvalues is not None and rec.cost["hvps"] == rec.hvps


@pytest.mark.parametrize("make", [lambda m: torch.optim.SGD(m.parameters(), lr=0.1),
                                  lambda m: SAM(m.parameters(), torch.optim.SGD, rho=0.05, lr=0.1),
                                  lambda m: None], ids=["sgd", "sam-sgd", "none"])
def test_a_non_adam_optimizer_is_a_config_error_before_anything_is_recorded(make: Callable[[nn.Module], Any]) -> None:
    model, x, y = problem()
    records: list[RunRecord] = []
    t = SharpnessTracker((x, y), mse, every=1, preconditioned=True, sink=records.append)
    with pytest.raises(ConfigError, match="preconditioned=True .* needs torch.optim.Adam"):
        t.measure(0, model, make(model))
    assert records == [] and t.last is None
    with pytest.raises(ConfigError, match="preconditioned must be true or false"):
        SharpnessTracker((x, y), mse, every=1, preconditioned=1)  # type: ignore[arg-type]


def test_the_preconditioned_warm_start_survives_a_state_round_trip() -> None:
    model, x, y = problem()
    opt = adam_steps(model, x, y, "adam", steps=2)
    make = tracker(preconditioned=True)
    first = make(x, y)
    first.measure(2, model, opt)
    state = first.state_dict()
    assert state["preconditioned_eigenvectors"].shape == (34, 2)
    opt.zero_grad()  # one more Adam step
    mse(model(x), y).backward()
    opt.step()
    resumed = make(x, y)
    resumed.load_state_dict(state)
    again, cont = resumed.measure(3, model, opt), first.measure(3, model, opt)
    assert again.warm_start and without_timings(again.to_json()) == without_timings(cont.to_json())  # bit-identical
    partial = make(x, y)  # the same state without the preconditioned vectors: that Lanczos starts afresh
    partial.load_state_dict({**state, "preconditioned_eigenvectors": None})
    cold = partial.measure(3, model, opt)
    assert cold.hvps == cont.hvps and cold.preconditioned_hvps > cont.preconditioned_hvps
    with pytest.raises(ConfigError, match="preconditioned_eigenvectors must be a tensor"):
        resumed.load_state_dict({**state, "preconditioned_eigenvectors": [1.0]})


def tiny_adam(**overrides: Any) -> TrainConfig:
    """Full-batch Adam on 64 MNIST-1D examples, a 40-16-10 MLP, measured every 2 steps."""
    cfg = TrainConfig(model={"name": "mlp", "kwargs": {"in_features": 40, "num_classes": 10, "widths": [16],
                                                        "activation": "tanh"}},
                      data="mnist1d", n=64, steps=6, measure_every=2, checkpoint_every=3, loss="mse",
                      optimizer="adam", optimizer_kwargs={"lr": 1e-3}, preconditioned=True)
    return cfg.with_overrides(overrides)


def test_config_accepts_preconditioned_only_for_adam() -> None:
    assert tiny_adam(optimizer="adamw").preconditioned
    assert tiny_adam(optimizer="sam", optimizer_kwargs={"lr": 1e-3, "base": "adam"}).preconditioned
    for bad in ({"optimizer": "gd"}, {"optimizer": "sam", "optimizer_kwargs": {"lr": 0.1}},
                {"optimizer": "sparse-sam", "optimizer_kwargs": {"lr": 0.1, "base": "sgd"}}):
        with pytest.raises(ConfigError, match="preconditioned=true .* needs optimizer adam"):
            tiny_adam(**bad)
    with pytest.raises(ConfigError, match="preconditioned must be true or false"):
        tiny_adam(preconditioned="yes")
    assert not tiny_adam(preconditioned=False, optimizer="gd").preconditioned


def test_a_run_records_it_and_the_sharpness_figure_draws_it_against_the_adam_edge(tmp_path: Path) -> None:
    train(tiny_adam(), tmp_path / "run")
    records = [r for r in RunDirectory(tmp_path / "run").read_metrics() if r["kind"] == "measurement"]
    assert [r["step"] for r in records] == [0, 2, 4, 6]
    assert records[0]["preconditioned_eigenvalues"] is None and "preconditioned_eigenvalues" in records[0]["errors"]
    pre = [r["preconditioned_eigenvalues"][0] for r in records[1:]]
    assert all(p > 0 for p in pre) and all(r["warm_start"] for r in records[1:])
    assert all(r["settings"]["preconditioned"] == "adam" for r in records)

    data = sharpness_data(tmp_path / "run")["runs"][0]
    assert data["quantity"] == "lambda_max(P^-1 H)" and "note" not in data
    assert np.allclose(data["edge"], adam_edge(1e-3, 0.9)) and adam_edge(1e-3, 0.9) == pytest.approx(38_000)
    fig = sharpness_figure(tmp_path / "run")
    (line,) = [ln for ln in fig.axes[0].get_lines() if ln.get_gid() == "lambda1"]
    (edge,) = [ln for ln in fig.axes[0].get_lines() if ln.get_gid() == "edge"]
    ys = np.asarray(line.get_ydata(), dtype=float)
    assert np.isnan(ys[0]) and np.allclose(ys[1:], pre, rtol=1e-12)
    assert np.allclose(np.asarray(edge.get_ydata(), dtype=float), 38_000)


def test_summary_and_cli_compare_the_edge_with_the_sharpness_it_bounds() -> None:
    """Under Adam's rule the edge bounds λ_max(P⁻¹H): the summary line must not set it against raw λ_max."""
    from sharpscope_cli.train import summary_line

    from sharpscope.track.thresholds import bounded_sharpness

    adam = {"eigenvalues": [3.0], "preconditioned_eigenvalues": [41000.0],
            "thresholds": {"rule": "adam_edge", "edge": 38000.0}}
    gd = {"eigenvalues": [3.0], "preconditioned_eigenvalues": None, "thresholds": {"rule": "gd_edge", "edge": 2.0}}
    typed = lambda part: Measurement.from_json({"step": 5, **part})  # noqa: E731
    assert bounded_sharpness(typed(adam)) == ("λ_max(P⁻¹H)", 41000.0)
    assert bounded_sharpness(typed(gd)) == ("λ_max", 3.0)
    assert bounded_sharpness(typed({**adam, "preconditioned_eigenvalues": None})) == ("λ_max(P⁻¹H)", None)
    summary = {"status": "finished", "step": 5, "steps_requested": 5, "final": adam, "measurements": 2,
               "hvps_total": 10, "run_dir": "r"}
    assert "λ_max(P⁻¹H) 4.1e+04 vs adam_edge 3.8e+04" in summary_line(RunSummary.from_json(summary))
