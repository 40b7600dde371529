"""Bad arguments to the library are refused with one line before any product or allocation."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from sharpscope import HessianOperator, Objective, lanczos
from sharpscope.curvature import hutchinson, hutchpp, slq_density
from sharpscope.curvature.fits import check_model_fits
from sharpscope.curvature.settings import CurvatureSettings
from sharpscope.errors import ConfigError, DataError
from sharpscope.landscape.grid import check_grid_memory, grid_bytes
from sharpscope.models.inputs import expected_input
from sharpscope.probe import ProbeSettings
from sharpscope.track import resolve_device
from sharpscope.validation import (
    check_depth,
    check_module_path,
    check_output_dir,
    check_seed,
    check_tol,
    offset_seed,
)

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def op() -> HessianOperator:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)).double()
    x = torch.randn(8, 3, dtype=torch.float64)
    return HessianOperator(Objective(model, torch.nn.MSELoss(), (x, x[:, :1])))


def test_eigen_trace_and_density_arguments_are_checked_before_any_product(op: HessianOperator) -> None:
    cases = [(lambda: lanczos(op, tol=math.inf), "tol must be finite"),
             (lambda: lanczos(op, tol=1e300), r"tol must be in \(0.0, 1.0\)"),
             (lambda: lanczos(op, tol=1.0), r"tol must be in \(0.0, 1.0\)"),
             (lambda: lanczos(op, k=1.5), "k must be a positive integer"),
             (lambda: lanczos(op, k=True), "k must be a positive integer"),
             (lambda: lanczos(op, max_iter=2.5), "max_iter must be a positive integer"),
             (lambda: hutchinson(op, math.nan), "num_matvecs must be an integer"),
             (lambda: hutchinson(op, 8.0), "num_matvecs must be an integer"),
             (lambda: hutchpp(op, 5), "Hutch\\+\\+ needs num_matvecs >= 6"),
             (lambda: hutchpp(op, True), "num_matvecs must be an integer"),
             (lambda: slq_density(op, 5, 2.0), "num_runs must be a positive integer"),
             (lambda: slq_density(op, 5, 2, sigma2=math.nan), "sigma2 must be finite")]
    for call, message in cases:
        with pytest.raises(ConfigError, match=message):
            call()
    assert op.matvecs == 0


def test_probe_settings_check_the_trace_budget_and_seed_up_front() -> None:
    with pytest.raises(ConfigError, match="Hutch\\+\\+ needs trace_matvecs >= 6") as info:
        ProbeSettings(trace=True, curvature=CurvatureSettings(trace_matvecs=4))
    assert info.value.argument == "trace_matvecs"
    with pytest.raises(ConfigError, match="seed must be an integer in"):
        ProbeSettings(seed=2**64)
    with pytest.raises(ConfigError, match="k must be a positive integer"):
        ProbeSettings(curvature=CurvatureSettings(k=True))
    assert ProbeSettings(seed=2**64 - 1).seed == 2**64 - 1
    assert offset_seed(2**64 - 1, 2) == 1 and offset_seed(5, 2) == 7


def test_work_budgets_over_their_limit_are_refused_with_an_estimate_of_their_time(op: HessianOperator) -> None:
    from sharpscope.curvature.algorithms.trace import MAX_MATVECS
    from sharpscope.demo import MAX_STEPS, train_demo_model

    for call in (lambda: hutchinson(op, 10**9), lambda: hutchpp(op, MAX_MATVECS + 1)):
        with pytest.raises(ConfigError, match="over the limit of 100,000 products: it would take about") as info:
            call()
        assert info.value.argument == "num_matvecs" and "\n" not in str(info.value)
    assert op.matvecs == 0
    with pytest.raises(ConfigError, match=r"trace_matvecs=1,000,000,000 .* about 11.6 days at 1 ms each"):
        CurvatureSettings(trace_matvecs=10**9)
    assert CurvatureSettings(trace_matvecs=MAX_MATVECS).trace_matvecs == MAX_MATVECS  # the limit itself is allowed
    with pytest.raises(ConfigError, match=r"steps=100,000,000,000 is over the limit of 100,000 steps: .* 15.8 years"):
        train_demo_model(10**11)
    with pytest.raises(ConfigError, match="steps must be a positive integer"):
        train_demo_model(1.5)  # type: ignore[arg-type]
    assert MAX_STEPS == 100_000


def test_inputs_that_overflow_the_compute_dtype_are_refused() -> None:
    model = torch.nn.Linear(3, 1)
    x = torch.full((4, 3), 1e300, dtype=torch.float64)
    with pytest.raises(DataError, match=r"values up to 1e\+300 overflow float32"):
        Objective(model, torch.nn.MSELoss(), (x, torch.zeros(4, 1)))
    Objective(model.double(), torch.nn.MSELoss(), (x * 1e-300, torch.zeros(4, 1, dtype=torch.float64)))


def test_the_model_fit_check_names_the_expected_input_and_the_data_shape() -> None:
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 2))
    assert expected_input(conv).startswith("(N, 3, H, W)")
    with pytest.raises(ConfigError, match=r"expects inputs \(N, 3, H, W\).*shape \(40,\) per example"):
        check_model_fits(conv, torch.nn.CrossEntropyLoss(), torch.randn(5, 40), torch.zeros(5, dtype=torch.long))
    mlp = torch.nn.Linear(12, 2)
    with pytest.raises(ConfigError, match=r"expects inputs \(N, 12\).*shape \(40,\) per example"):
        check_model_fits(mlp, torch.nn.CrossEntropyLoss(), torch.randn(5, 40), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ConfigError, match="labels 0..7 but the model has 2 outputs"):
        check_model_fits(mlp, torch.nn.CrossEntropyLoss(), torch.randn(8, 12), torch.arange(8))
    check_model_fits(mlp, torch.nn.CrossEntropyLoss(), torch.randn(8, 12), torch.arange(8) % 2, k=3)


def test_shared_option_checks(tmp_path: Path) -> None:
    assert check_seed("seed", 0) == 0 and check_seed("seed", 2**64 - 1) == 2**64 - 1
    for bad in (-1, 2**64, 1.0, True, "3"):
        with pytest.raises(ConfigError, match="seed must be an integer"):
            check_seed("seed", bad)
    assert check_tol("tol", 0.5) == 0.5
    for bad in (0.0, 1.0, 1e300, math.inf, math.nan, -1e-3):
        with pytest.raises(ConfigError, match="tol must be"):
            check_tol("tol", bad)
    nested: list = []
    for _ in range(5000):  # deeper than Python's recursion limit: checked without recursion
        nested = [nested]
    with pytest.raises(ConfigError, match="more than 32 levels"):
        check_depth("value", nested)
    assert check_depth("value", {"a": [[1, 2], {"b": 3}]}) == {"a": [[1, 2], {"b": 3}]}
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="exists and is not a folder"):
        check_output_dir(tmp_path / "f", "--out")
    with pytest.raises(ConfigError, match="is a file"):
        check_output_dir(tmp_path / "f" / "a" / "b", "--out")
    assert check_output_dir(tmp_path / "new" / "deeper", "--out") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # checking creates nothing
    with pytest.raises(ConfigError, match="relative module paths"):
        check_module_path("--model", ".rel:factory")
    with pytest.raises(ConfigError, match="module:function"):
        check_module_path("--model", "nofactory")
    assert check_module_path("--model", "pkg.mod:make") == "pkg.mod:make"


def test_devices_must_exist_and_compute() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    for name, message in (("meta", "not meta"), ("cuda:99", "CUDA"), ("tpu", "not a device")):
        with pytest.raises(ConfigError, match=message):
            resolve_device(name)


def test_landscape_grids_are_bounded_by_their_memory() -> None:
    assert grid_bytes([21, 21]) == 16 * 6 * 441
    assert check_grid_memory([21, 21], total=2**30) == 441
    with pytest.raises(ConfigError, match="2000000000 × 21 = 42,000,000,000 points needs about"):
        check_grid_memory([2_000_000_000, 21], total=64 * 2**30)
