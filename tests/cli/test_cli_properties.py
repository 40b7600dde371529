"""Property tests: every invalid CLI input or recipe override is one clean error and leaves no trace.

Invalid values (non-positive or non-integer sizes, ``k`` beyond the number of parameters, unknown
model/data/optimizer/loss names, wrongly typed ``--set key=value`` overrides, NaN or infinite
numbers, malformed ``--set`` items, unknown keys) must end with exit code 1, exactly one line
``error: ...`` on stderr, nothing on stdout, no Python exception escaping, and the ``--out``
folder either still missing or byte for byte as it was (missing, a foreign folder, or another
run). Values Click itself cannot parse (``--k abc``) are usage errors: Click's exit code 2 and
usage message, again without a traceback. Driven in-process through ``typer.testing.CliRunner``,
plus one check through the installed ``sharpscope`` script.
"""

from __future__ import annotations

import json
import math
import os
import string
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sharpscope_cli.main import app
from typer.testing import CliRunner, Result

from sharpscope.curvature import CurvatureSettings
from sharpscope.errors import ConfigError
from sharpscope.experiments import RECIPES, SCALES, get_recipe
from sharpscope.io import save_checkpoint
from sharpscope.models import ModelSpec, available_models
from sharpscope.track import OPTIMIZERS, RunDirectory, TrainConfig

pytestmark = pytest.mark.usefixtures("single_thread")

PROPERTY = settings(max_examples=40, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
RECIPE = "eos-gd"
SMALL = ["steps=1", "n=16", "test_n=8"]  # should an input wrongly pass, the run stays short
POSITIVE_INTS = ("n", "test_n", "probe_n", "batch_size", "max_iter", "physical_batch_size", "measure_every", "k",
                 "checkpoint_every", "trace_matvecs")
NAMES = {"optimizer": set(OPTIMIZERS), "loss": {"ce", "mse", "mse-mean"}, "dtype": {"float32", "float64"},
         "bn": {"eval", "batch"}, "hvp_mode": {"auto", "fwd-rev", "rev-rev", "fd"},
         "trace_method": {"hutch++", "hutchinson"}, "data": {"mnist1d"}, "test_data": {"mnist1d"},
         "model.name": set(available_models())}  # the valid names, never drawn
BOOLS = ("trace", "cache_graphs", "model.kwargs.bias", "model.kwargs.flatten")
FLOATS = ("optimizer_kwargs.lr", "tol", "optimizer_kwargs.momentum", "stop_at_train_acc")
runner = CliRunner()


def recipe_dim() -> int:
    spec = ModelSpec.from_dict(get_recipe(RECIPE, "smoke").model)
    return sum(p.numel() for p in spec.build().parameters())


def words(valid: set[str]) -> st.SearchStrategy[str]:
    return st.text(string.ascii_lowercase + "-_", min_size=1, max_size=10).filter(lambda s: s not in valid)


def not_an_int() -> st.SearchStrategy[Any]:
    return st.one_of(st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: not f.is_integer()),
                     st.booleans(), st.text(string.ascii_letters, min_size=1, max_size=5), st.just([1]))


def bad_overrides(dim: int) -> st.SearchStrategy[str]:
    """One ``--set KEY=VALUE`` item (or a malformed one) that no config may accept."""
    pairs = st.one_of(  # (key, value), the value written as JSON
        st.tuples(st.sampled_from(POSITIVE_INTS), st.one_of(st.integers(max_value=0), not_an_int())),
        st.tuples(st.sampled_from(("steps", "seed")), st.one_of(st.integers(max_value=-1), not_an_int())),
        st.tuples(st.just("k"), st.integers(dim + 1, 10 * dim)),  # beyond the number of parameters
        st.sampled_from(sorted(NAMES)).flatmap(lambda key: st.tuples(st.just(key), st.one_of(
            words(NAMES[key]), st.integers(), st.none() if key != "test_data" else st.nothing()))),
        st.tuples(st.sampled_from(BOOLS), st.one_of(st.integers(), st.text(string.ascii_letters, max_size=4))).filter(
            lambda kv: kv != ("cache_graphs", "auto")),  # the one word cache_graphs takes
        st.tuples(st.sampled_from(("data_options.seed", "test_data_options.seed")),
                  st.one_of(st.integers(max_value=-1), st.integers(min_value=2**32), not_an_int())),
        st.tuples(st.sampled_from(FLOATS), st.sampled_from([math.nan, math.inf, -math.inf])),
        st.tuples(st.sampled_from(("optimizer_kwargs.lr", "tol")), st.one_of(st.floats(max_value=0), st.just("x"))),
        st.tuples(st.just("stop_at_train_acc"), st.floats(min_value=1.0, exclude_min=True)),
        st.tuples(words({*TrainConfig.field_names(), *CurvatureSettings.field_names()}), st.integers()),  # unknown key
    ).filter(lambda kv: not (kv[0] == "optimizer_kwargs.lr" and kv[1] == 0))  # lr = 0 is allowed
    written = pairs.map(lambda kv: f"{kv[0]}={json.dumps(kv[1])}")
    malformed = st.one_of(words(set()), st.text(string.ascii_lowercase, max_size=4).map(lambda s: "=" + s))
    return st.one_of(written, written, written, malformed)


def snapshot(folder: Path) -> dict[str, bytes | None] | None:
    """Every path under ``folder`` with its bytes (None for folders); None if ``folder`` does not exist."""
    if not folder.exists():
        return None
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def prepare(folder: Path, state: str) -> None:
    if state == "foreign":
        folder.mkdir()
        (folder / "notes.txt").write_text("mine")
    elif state == "other-run":
        RunDirectory(folder).create({"model": {"name": "mlp"}, "steps": 1})


def assert_clean_error(result: Result) -> None:
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 1, (result.exit_code, result.stdout, result.stderr)
    assert result.stdout == ""
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def dim() -> int:
    return recipe_dim()


@PROPERTY
@given(data=st.data(), state=st.sampled_from(["missing", "foreign", "other-run"]))
def test_invalid_train_overrides_are_one_clean_line_and_leave_the_folder_alone(dim: int, data: st.DataObject,
                                                                               state: str) -> None:
    bad = data.draw(bad_overrides(dim), label="--set")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        prepare(out, state)
        before = snapshot(out)
        sets = [arg for item in [*SMALL, bad] for arg in ("--set", item)]
        assert_clean_error(runner.invoke(app, ["train", RECIPE, *sets, "--out", str(out)]))
        assert snapshot(out) == before


@pytest.mark.parametrize("where", ["a file", "inside a file"])
def test_an_out_path_that_cannot_be_a_folder_is_one_clean_line(tmp_path: Path, where: str) -> None:
    (tmp_path / "file").write_text("mine")
    out = tmp_path / "file" if where == "a file" else tmp_path / "file" / "run"
    sets = [arg for item in SMALL for arg in ("--set", item)]
    assert_clean_error(runner.invoke(app, ["train", RECIPE, *sets, "--out", str(out)]))
    assert [p.name for p in tmp_path.iterdir()] == ["file"] and (tmp_path / "file").read_text() == "mine"


@pytest.fixture(scope="module")
def probe_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, int]:
    folder = tmp_path_factory.mktemp("probe-props")
    gen = torch.Generator().manual_seed(0)
    np.savez(folder / "data.npz", x=torch.randn(24, 5, generator=gen).numpy(),
             y=torch.randint(0, 3, (24,), generator=gen).numpy())
    spec = ModelSpec("mlp", {"in_features": 5, "num_classes": 3, "widths": [4]})
    model = spec.build()
    ckpt = save_checkpoint(folder / "model.safetensors", model, spec=spec)
    return ckpt, folder / "data.npz", sum(p.numel() for p in model.parameters())


def bad_probe_args(dim: int) -> st.SearchStrategy[list[str]]:
    nonpositive = st.integers(max_value=0).map(str)
    return st.one_of(
        st.tuples(st.sampled_from(["--k", "--n", "--batch-size", "--max-iter"]), nonpositive).map(list),
        st.tuples(st.sampled_from(["--trace-matvecs"]), nonpositive).map(lambda a: ["--trace", *a]),
        st.tuples(st.sampled_from(["--density-steps", "--density-runs"]), nonpositive).map(lambda a: ["--density", *a]),
        st.integers(dim + 1, 100 * dim).map(lambda k: ["--k", str(k)]),  # beyond the number of parameters
        st.integers(1, 5).map(lambda m: ["--trace", "--trace-matvecs", str(m)]),  # too few for Hutch++
        st.one_of(st.floats(max_value=0), st.sampled_from([math.nan, math.inf])).map(lambda t: ["--tol", str(t)]),
        st.integers(max_value=-1).map(lambda s: ["--seed", str(s)]),
        words({"mnist1d"}).map(lambda d: ["--data", d]),
        st.sampled_from(["tpu", "gpu:0", "cuda:x", ""]).map(lambda d: ["--device", d]),
    )


@PROPERTY
@given(data=st.data())
def test_invalid_probe_arguments_are_one_clean_line(probe_files: tuple[Path, Path, int], data: st.DataObject) -> None:
    ckpt, npz, dim = probe_files
    args = data.draw(bad_probe_args(dim), label="args")
    assert_clean_error(runner.invoke(app, ["probe", str(ckpt), "--data", f"npz:{npz}", "--json", *args]))


@settings(max_examples=15, deadline=None, database=None)
@given(option=st.sampled_from(["--k", "--n", "--tol", "--batch-size", "--seed"]),
       text=st.text(string.ascii_letters, min_size=1, max_size=6).filter(lambda s: not is_number(s)))
def test_unparsable_option_values_are_usage_errors_without_traceback(option: str, text: str) -> None:
    result = runner.invoke(app, ["probe", "missing.safetensors", "--data", "mnist1d", option, text])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    assert "Invalid value" in result.output and "Traceback" not in result.output


def is_number(text: str) -> bool:
    try:
        float(text)  # "inf", "nan", "Infinity" are numbers to Click
    except ValueError:
        return False
    return True


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats() | st.text(max_size=6),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                                        max_size=3), max_leaves=6)


@settings(max_examples=150, deadline=None, database=None)
@given(recipe=st.sampled_from(sorted(RECIPES)), scale=st.sampled_from(SCALES),
       key=st.sampled_from([*TrainConfig.field_names(), "optimizer_kwargs.lr", "model.kwargs.widths", "nope"]),
       value=JSON_VALUES)
def test_any_override_gives_a_strict_json_config_or_a_config_error(recipe: str, scale: str, key: str,
                                                                   value: Any) -> None:
    try:
        cfg = get_recipe(recipe, scale, {key: value})
    except ConfigError:
        return
    text = json.dumps(cfg.to_dict(), allow_nan=False)  # config.json is strict JSON
    assert TrainConfig.from_dict(json.loads(text)) == cfg


def test_the_installed_script_refuses_a_nan_learning_rate_in_one_line(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "sharpscope"
    proc = subprocess.run([str(script), "train", RECIPE, "--set", "optimizer_kwargs.lr=NaN", "--out",
                           str(tmp_path / "run")], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr == "error: --set optimizer_kwargs.lr must be a finite number, got nan\n"
    assert not (tmp_path / "run").exists()
