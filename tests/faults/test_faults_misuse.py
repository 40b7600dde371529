"""Misuse at the public boundary is one line naming the argument, never a traceback from deep inside:
the library's main functions given wrong types, the command line given wrong values, and the
inputs that used to escape as tracebacks (a frozen model, a damaged Hugging Face folder, an
optimizer number the weights cannot hold, a key nested a thousand levels deep)."""

from __future__ import annotations

import pathlib
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sharpscope_cli.main import app
from torch import nn
from typer.testing import CliRunner

import sharpscope as ss
from sharpscope.errors import SharpscopeError
from sharpscope.io import save_checkpoint
from sharpscope.models import ModelSpec
from sharpscope.optim import SAM
from sharpscope.probe import ProbeSettings, probe
from sharpscope.track import SharpnessTracker

pytestmark = pytest.mark.usefixtures("single_thread")

torch.manual_seed(0)
MODEL = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
X = torch.randn(8, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
Y = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
LABELS = torch.arange(8) % 2
OBJECTIVE = ss.Objective(MODEL, nn.MSELoss(), (X, Y))
H = ss.HessianOperator(OBJECTIVE)


def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((model(x) - y) ** 2).mean()


def broken_sink(record: dict) -> None:
    raise RuntimeError("the sink's database is down")


# the library misuse calls that used to fail from deep inside, and the argument each must name
MISUSE: list[tuple[str, Callable[[], Any], str]] = [
    ("model as a string", lambda: ss.Objective("resnet18", nn.MSELoss(), (X, Y)), "model"),
    ("model as a list", lambda: probe([MODEL], nn.MSELoss(), X, Y), "model"),
    ("operator as a string", lambda: ss.lanczos("hessian", k=1), "op"),
    ("operator as a list", lambda: ss.hutchpp([[1.0, 0.0], [0.0, 1.0]], 12), "op"),
    ("tensor as a list", lambda: H.matvec([1.0] * H.dim), "v"),
    ("probe data as a list", lambda: probe(MODEL, nn.MSELoss(), X.tolist(), Y), "x"),
    ("batch_size=1.5", lambda: ss.Objective(MODEL, nn.MSELoss(), (X, Y), batch_size=1.5), "batch_size"),
    ("count_fn returning a string", lambda: ss.Objective(MODEL, nn.MSELoss(), (X, Y), count_fn=lambda b: "many"),
     "count_fn"),
    ("LambdaOperator of the wrong output shape",
     lambda: ss.lanczos(ss.LambdaOperator(lambda v: v[:2], dim=5), k=1), "fn"),
    ("a sink that raises", lambda: SharpnessTracker((X, Y), nn.MSELoss(), every=1, sink=broken_sink,
                                                    curvature=ss.curvature.CurvatureSettings(max_iter=6)).measure(0, MODEL),
     "sink"),
    ("tracker test_data of the wrong shape",
     lambda: SharpnessTracker((X, Y), nn.MSELoss(), every=1, test_data=(torch.randn(8, 5).double(), Y)).measure(0, MODEL),
     None),  # the model-fit check names the expected input and the data's shape instead
    ("SAM(lr=-1)", lambda: SAM(MODEL.parameters(), torch.optim.SGD, lr=-1), "lr"),
    ("SAM(params=[])", lambda: SAM([], torch.optim.SGD, lr=0.1), "params"),
    ("SAM(params='weights')", lambda: SAM("weights", torch.optim.SGD, lr=0.1), "params"),
    ("m_sharpness_step on a list", lambda: SAM(MODEL.parameters(), torch.optim.SGD, lr=0.1).m_sharpness_step(
        MODEL, loss, X.tolist(), Y, 2), "inputs"),
    ("probe settings as a dict", lambda: probe(MODEL, nn.MSELoss(), X, Y, {"k": 1}), "settings"),  # type: ignore[arg-type]
    ("exact_hessian of an operator", lambda: ss.exact_hessian(H), "objective"),  # type: ignore[arg-type]
]


@pytest.mark.parametrize("what, call, argument", MISUSE, ids=[m[0] for m in MISUSE])
def test_each_library_misuse_is_one_line_naming_the_argument(what: str, call: Callable[[], Any],
                                                             argument: str | None) -> None:
    with pytest.raises(SharpscopeError) as info:
        call()
    assert "\n" not in str(info.value), str(info.value)
    assert info.value.argument == argument, (info.value.argument, str(info.value))
    if argument is not None:
        assert argument in str(info.value)


# ------------------------------------------------------------------------------ wrong types, at random
JUNK = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=True, allow_infinity=True),
                 st.text(max_size=4), st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=2),
                 st.integers(), max_size=1), st.just(b"\x00"), st.just(object()), st.just(MODEL), st.just(H))

# each public entry point with valid arguments; one of them is replaced by junk
ENTRY_POINTS: dict[str, tuple[Callable[..., Any], dict[str, Any]]] = {
    "Objective": (lambda model, loss_fn, data, batch_size: ss.Objective(model, loss_fn, data, batch_size=batch_size),
                  {"model": MODEL, "loss_fn": nn.MSELoss(), "data": (X, Y), "batch_size": 4}),
    "HessianOperator": (lambda objective, block_size: ss.HessianOperator(objective, block_size=block_size),
                        {"objective": OBJECTIVE, "block_size": 4}),
    "lanczos": (lambda op, k, tol, max_iter: ss.lanczos(op, k=k, tol=tol, max_iter=max_iter),
                {"op": H, "k": 1, "tol": 1e-2, "max_iter": 10}),
    "hutchinson": (lambda op, num_matvecs, seed: ss.hutchinson(op, num_matvecs, seed=seed),
                   {"op": H, "num_matvecs": 4, "seed": 0}),
    "slq_density": (lambda op, num_steps, num_runs: ss.slq_density(op, num_steps, num_runs),
                    {"op": H, "num_steps": 4, "num_runs": 2}),
    "matvec": (lambda v: H.matvec(v), {"v": torch.ones(H.dim, dtype=torch.float64)}),
    "probe": (lambda model, loss_fn, x, y, settings: probe(model, loss_fn, x, y, settings),
              {"model": MODEL, "loss_fn": nn.MSELoss(), "x": X, "y": Y,
               "settings": ProbeSettings(curvature=ss.curvature.CurvatureSettings(max_iter=6))}),
    "SAM": (lambda params, rho, lr: SAM(params, torch.optim.SGD, rho=rho, lr=lr),
            {"params": list(MODEL.parameters()), "rho": 0.05, "lr": 0.1}),
    "SharpnessTracker": (lambda probe_data, every, test_data, sink: SharpnessTracker(
        probe_data, nn.MSELoss(), every=every, test_data=test_data, sink=sink,
        curvature=ss.curvature.CurvatureSettings(max_iter=6)).measure(0, MODEL),
        {"probe_data": (X, Y), "every": 1, "test_data": None, "sink": None}),
}


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(entry=st.sampled_from(sorted(ENTRY_POINTS)), slot=st.integers(0, 4), junk=JUNK)
def test_wrong_types_to_public_functions_are_refused_in_one_line(entry: str, slot: int, junk: Any) -> None:
    fn, kwargs = ENTRY_POINTS[entry]
    name = sorted(kwargs)[slot % len(kwargs)]
    try:
        fn(**{**kwargs, name: junk})
    except SharpscopeError as e:
        assert "\n" not in str(e), (entry, name, junk, str(e))
    # anything else (a TypeError, an AttributeError from deep inside) fails the test with its traceback


# ----------------------------------------------------------------------------------- the command line
@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("misuse")
    spec = ModelSpec("mlp", {"in_features": 40, "num_classes": 10, "widths": [8]})
    (folder / "frozen_mod.py").write_text(
        "from sharpscope.models import ModelSpec\n"
        "def frozen():\n"
        "    m = ModelSpec('mlp', {'in_features': 40, 'num_classes': 10, 'widths': [8]}).build()\n"
        "    return m.requires_grad_(False)\n")
    return {"folder": folder, "mlp": save_checkpoint(folder / "mlp.safetensors", spec.build(), spec=spec),
            "plain": save_checkpoint(folder / "plain.pt", spec.build(), spec=None)}


def one_line(result: Any, code: int = 1) -> str:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output and result.output.count("\n") == 1, result.output
    return str(result.output)


def test_the_traceback_causes_of_the_command_line_are_one_line(tmp_path: Path, checkpoints: dict[str, Path],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    monkeypatch.chdir(checkpoints["folder"])
    monkeypatch.syspath_prepend(str(checkpoints["folder"]))
    out = one_line(runner.invoke(app, ["probe", str(checkpoints["plain"]), "--data", "mnist1d", "--n", "8",
                                       "--model", "frozen_mod:frozen"]))
    assert "no trainable parameters" in out
    deep = ".".join(["a"] * 1000)
    out = one_line(runner.invoke(app, ["train", "eos-gd", "--out", str(tmp_path / "a"), "--set",
                                       f"optimizer_kwargs.{deep}=1"]))
    assert "nests 1001 levels deep, more than 32" in out
    out = one_line(runner.invoke(app, ["train", "eos-gd", "--out", str(tmp_path / "b"), "--set",
                                       "optimizer_kwargs.lr=1e308"]))
    assert "optimizer_kwargs.lr=1e+308 overflows the weights' float32" in out
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


class _Marker:
    """A pickle whose loading would create a file: the test that it is never loaded."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return pathlib.Path.touch, (pathlib.Path(self.path),)


def test_damaged_hugging_face_folders_are_one_line(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(vocab_size=256, n_positions=16, n_embd=4, n_layer=1, n_head=2)
    model = transformers.GPT2LMHeadModel(config)
    text = tmp_path / "text.txt"
    text.write_text("some bytes to predict " * 20)
    truncated, unsafe = tmp_path / "truncated", tmp_path / "unsafe"
    model.save_pretrained(truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    model.save_pretrained(unsafe)
    (unsafe / "model.safetensors").unlink()
    marker = tmp_path / "code-ran"
    with open(unsafe / "pytorch_model.bin", "wb") as f:
        pickle.dump({"weight": _Marker(marker)}, f, protocol=4)
    for folder, needle in ((truncated, "truncated or corrupt model.safetensors"),
                           (unsafe, "holds a pickle that would run code when loaded")):
        out = one_line(CliRunner().invoke(app, ["probe", str(folder), "--model", f"hf:{folder}", "--data",
                                                f"text:{text}", "--n", "4", "--loss", "token-ce"]))
        assert needle in out and str(folder) in out
    assert not marker.exists()


PROBE_OPTIONS = ["--k", "--tol", "--max-iter", "--trace-matvecs", "--batch-size", "--seed", "--device", "--dtype",
                 "--density-steps", "--density-runs", "--block", "--bn", "--n", "--layer-depth"]
VALUES = st.one_of(st.sampled_from(["", "-1", "0", "1.5", "nan", "inf", "1e999", "abc", "99999999999999999999999",
                                    "--k", "auto", "cuda:99"]), st.text(max_size=6))


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(option=st.sampled_from(PROBE_OPTIONS), value=VALUES)
def test_wrong_values_of_probe_options_exit_without_a_traceback(checkpoints: dict[str, Path], option: str,
                                                                value: str) -> None:
    result = CliRunner().invoke(app, ["probe", str(checkpoints["mlp"]), "--data", "mnist1d", "--n", "8",
                                      "--max-iter", "8", option, value, "--json"])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output and result.exit_code in (0, 1, 2), (option, value, result.output)
    if result.exit_code == 1:  # ours: one line (2 is the option parser's usage error)
        assert result.output.startswith("error: ") and result.output.count("\n") == 1, result.output


TRAIN_KEYS = ["lr", "optimizer_kwargs.lr", "optimizer_kwargs.momentum", "k", "tol", "seed", "n", "batch_size",
              "measure_every", "checkpoint_every", "model.kwargs.widths", "data", "optimizer", "device", "trace_matvecs"]
JSON_JUNK = st.sampled_from(['"x"', "-1", "0", "1.5", "1e308", "-1e308", "null", "[]", "{}", "[1, [2]]", "true",
                             '"cuda:7"', "1e999", "99999999999999999999999", '{"a": 1}'])


@settings(max_examples=20, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from(TRAIN_KEYS), value=JSON_JUNK)
def test_wrong_values_of_train_settings_exit_without_a_traceback(key: str, value: str) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        result = CliRunner().invoke(app, ["train", "eos-gd", "--out", str(Path(folder) / "run"), "--set", "steps=2",
                                          "--set", "trace=false", "--set", f"{key}={value}"])
    assert result.exception is None or isinstance(result.exception, SystemExit), (key, value, repr(result.exception))
    assert "Traceback" not in result.output and result.exit_code in (0, 1, 3), (key, value, result.output)
    if result.exit_code == 1:
        assert result.output.startswith("error: ") and result.output.count("\n") == 1, result.output
