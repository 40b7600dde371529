"""CurvatureSettings: one checked set of settings; the default step limit; the settings reach every estimate."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from sharpscope.curvature import CurvatureSettings, per_layer_curvature
from sharpscope.curvature.settings import DEFAULTS, RUN_DEFAULTS, default_max_iter
from sharpscope.errors import ConfigError
from sharpscope.probe import ProbeSettings, probe
from sharpscope.track import SharpnessTracker, TrainConfig


@pytest.mark.parametrize(("dim", "k", "expected"), [(50, 1, 50), (1000, 1, 100), (1000, 5, 100), (1000, 10, 200),
                                                     (150, 10, 150)])
def test_the_default_step_limit_is_min_of_dim_and_max_of_100_and_20k(dim: int, k: int, expected: int) -> None:
    assert default_max_iter(dim, k) == expected
    assert CurvatureSettings(k=k).lanczos_steps(dim) == expected
    assert CurvatureSettings(k=k, max_iter=7).lanczos_steps(dim) == 7


@pytest.mark.parametrize(("changes", "argument", "message"), [
    ({"k": 0}, "k", "k must be a positive integer, got 0"),
    ({"tol": 1.0}, "tol", r"tol must be in \(0.0, 1.0\), got 1.0"),
    ({"max_iter": 0}, "max_iter", "max_iter must be a positive integer or None, got 0"),
    ({"stop": "gap"}, "stop", "stop must be 'residual' or 'eigenvalue', got 'gap'"),
    ({"trace_method": "hutch"}, "trace_method", "trace_method must be 'hutch\\+\\+' or 'hutchinson', got 'hutch'"),
    ({"trace_method": "hutchinson", "trace_matvecs": 1}, "trace_matvecs", "Hutchinson needs trace_matvecs >= 2"),
    ({"bn": "train"}, "bn", "bn must be 'eval' or 'batch', got 'train'"),
    ({"hvp_mode": "rev"}, "hvp_mode", "hvp_mode must be 'auto', 'fwd-rev', 'rev-rev' or 'fd', got 'rev'"),
    ({"block_size": 0}, "block_size", "block_size must be a positive integer, got 0"),
    ({"precision": "fp16"}, "precision", "precision must be 'strict', 'tf32' or 'bf16', got 'fp16'"),
    ({"compile": 1}, "compile", "compile must be true or false, got 1"),
    ({"block": 0}, "block", "block must be a positive integer or None, got 0"),
    ({"cache_graphs": 1}, "cache_graphs", "cache_graphs must be True, False or 'auto', got 1"),
    ({"cache_graphs": True, "hvp_mode": "fd"}, "cache_graphs", "cache_graphs=True needs hvp_mode 'rev-rev' or 'auto'"),
])
def test_every_setting_is_checked_on_creation_and_the_error_names_it(changes: dict, argument: str,
                                                                     message: str) -> None:
    with pytest.raises(ConfigError, match=f"^{message}") as info:
        CurvatureSettings(**changes)
    assert info.value.argument == argument
    with pytest.raises(ConfigError, match=f"^{message}"):  # a copy is checked like a new one
        CurvatureSettings().replace(**changes)


def test_settings_are_frozen_and_round_trip_through_a_dict() -> None:
    settings = CurvatureSettings(k=3, tol=1e-5, stop="eigenvalue", cache_graphs=False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.k = 4  # type: ignore[misc]
    assert CurvatureSettings.from_dict(settings.to_dict()) == settings
    assert CurvatureSettings.from_dict({"k": 2}, base=RUN_DEFAULTS) == RUN_DEFAULTS.replace(k=2)
    with pytest.raises(ConfigError, match=r"unknown curvature setting\(s\) \['kk'\]") as info:
        CurvatureSettings.from_dict({"kk": 2})
    assert info.value.argument == "curvature"
    assert (DEFAULTS.cache_graphs, DEFAULTS.hvp_mode) == ("auto", "auto") and CurvatureSettings() == DEFAULTS
    assert ProbeSettings().curvature == DEFAULTS
    assert CurvatureSettings(hvp_mode="rev-rev") == RUN_DEFAULTS and TrainConfig(model={"name": "mlp"}).curvature == \
        RUN_DEFAULTS


def test_callers_refuse_anything_but_settings() -> None:
    x, y = torch.zeros(4, 2), torch.zeros(4, 1)
    for build in (lambda: ProbeSettings(curvature={"k": 2}),  # type: ignore[arg-type]
                  lambda: SharpnessTracker((x, y), nn.MSELoss(), every=1, curvature={"k": 2}),  # type: ignore[arg-type]
                  lambda: per_layer_curvature(nn.Linear(2, 1), nn.MSELoss(), (x, y),
                                              settings={"k": 2})):  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="must be a CurvatureSettings, got dict"):
            build()
    with pytest.raises(ConfigError, match="hvp_mode='fd' applies to the Hessian only, not to operator 'ggn'") as info:
        ProbeSettings(operator="ggn", curvature=CurvatureSettings(hvp_mode="fd"))
    assert info.value.argument == "operator"


def quadratic() -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    """½‖Xw‖²/N over two layers' weights: the Hessian is block diagonal, XᵀX/N per block."""
    torch.manual_seed(0)
    x = torch.randn(40, 6, dtype=torch.float64) * torch.linspace(0.5, 3.0, 6, dtype=torch.float64)
    model = nn.Sequential(nn.Linear(6, 1, bias=False)).double()
    return model, x, torch.zeros(40, 1, dtype=torch.float64), x.T @ x / len(x)


def test_the_probe_and_the_layers_use_every_setting_they_are_given() -> None:
    model, x, y, hessian = quadratic()
    exact = torch.linalg.eigvalsh(hessian).flip(0)
    loss = lambda out, t: 0.5 * ((out - t) ** 2).sum(1).mean()  # noqa: E731
    settings = CurvatureSettings(k=2, tol=1e-10, stop="eigenvalue", hvp_mode="rev-rev", trace_method="hutchinson",
                                 trace_matvecs=4, max_iter=6)
    report = probe(model, loss, x, y, ProbeSettings(curvature=settings, trace=True, batch_size=16, seed=1))
    torch.testing.assert_close(report.top.eigenvalues, exact[:2], rtol=1e-9, atol=0)  # 6 steps span R^6: exact
    s = report.settings
    assert (s["k"], s["tol"], s["stop"], s["max_iter"], s["trace_method"], s["trace_matvecs"]) == \
        (2, 1e-10, "eigenvalue", 6, "hutchinson", 4)
    assert report.trace is not None and report.trace.hvps == 4 and report.top.settings["stop"] == "eigenvalue"
    layers = per_layer_curvature(model, loss, (x, y), settings=settings, trace=True, seed=1)
    (row,) = layers.rows
    torch.testing.assert_close(row.top.eigenvalues, exact[:2], rtol=1e-9, atol=0)
    assert row.top.settings["stop"] == "eigenvalue" and row.top.settings["max_iter"] == 6
    assert row.trace is not None and row.trace.hvps == 4 and row.hvp_mode == "rev-rev"
    assert layers.settings["stop"] == "eigenvalue" and layers.settings["trace_method"] == "hutchinson"


def test_the_probe_tracker_and_layers_run_block_lanczos_when_asked() -> None:
    """``block`` reaches Lanczos from every caller: top-3 of a 6-dimensional quadratic, exact once the
    blocks span the space, with the block recorded in the result."""
    from sharpscope.track import SharpnessTracker

    model, x, y, hessian = quadratic()
    exact = torch.linalg.eigvalsh(hessian).flip(0)
    loss = lambda out, t: 0.5 * ((out - t) ** 2).sum(1).mean()  # noqa: E731
    settings = CurvatureSettings(k=3, tol=1e-10, block=3, hvp_mode="rev-rev")
    report = probe(model, loss, x, y, ProbeSettings(curvature=settings, batch_size=16))
    torch.testing.assert_close(report.top.eigenvalues, exact[:3], rtol=1e-9, atol=0)
    assert report.top.settings["block"] == 3
    (row,) = per_layer_curvature(model, loss, (x, y), settings=settings).rows
    assert row.top.settings["block"] == 3
    torch.testing.assert_close(row.top.eigenvalues, exact[:3], rtol=1e-9, atol=0)
    tracker = SharpnessTracker((x, y), loss, curvature=settings, every=1)
    record = tracker.measure(0, model)
    torch.testing.assert_close(torch.tensor(record.eigenvalues, dtype=torch.float64), exact[:3], rtol=1e-9, atol=0)


def test_precision_and_compile_reach_the_operator() -> None:
    model, x, y, _ = quadratic()
    settings = CurvatureSettings(precision="tf32")
    from sharpscope.curvature import Objective

    op = settings.hessian(Objective(model.float(), lambda out, t: ((out - t) ** 2).mean(), (x.float(), y.float())))
    assert op.precision == "tf32" and op.compile is False
