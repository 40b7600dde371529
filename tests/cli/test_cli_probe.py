"""The CLI through its installed entry point: output contract, agreement with the library, clean errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sharpscope import HessianOperator, Objective, lanczos
from sharpscope.io import save_checkpoint
from sharpscope.losses import cross_entropy
from sharpscope.models import ModelSpec

SCRIPT = Path(sys.executable).parent / "sharpscope"


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, ModelSpec]:
    folder = tmp_path_factory.mktemp("cli")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(300, 12, generator=gen)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    np.savez(folder / "data.npz", x=x.numpy(), y=y.numpy())
    spec = ModelSpec("mlp", {"in_features": 12, "num_classes": 3, "widths": [16], "activation": "tanh"})
    torch.manual_seed(0)
    ckpt = save_checkpoint(folder / "model.safetensors", spec.build(), spec=spec)
    return folder, ckpt, spec


def test_probe_json_contract_and_agreement_with_the_library(setup: tuple[Path, Path, ModelSpec]) -> None:
    folder, ckpt, spec = setup
    proc = run("probe", str(ckpt), "--data", f"npz:{folder / 'data.npz'}", "--n", "200", "--k", "3", "--negative",
               "--trace", "--density", "--density-steps", "20", "--density-runs", "2", "--json", "--dtype", "float64",
               "--tol", "1e-8", "--batch-size", "64")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["eigenvalues"] == sorted(out["eigenvalues"], reverse=True) and len(out["eigenvalues"]) == 3
    assert len(out["residuals"]) == 3 and max(out["residuals"]) < 1e-8 and out["settings"]["stop"] == "residual"
    assert all(0 <= b <= r * abs(e) + 1e-12 for b, r, e in zip(out["error_bounds"], out["residuals"], out["eigenvalues"]))
    assert out["hvps"] > 0 and out["seconds"] > 0 and out["converged"] is True
    assert out["trace"]["stderr"] > 0 and out["trace"]["hvps"] == 99
    assert out["most_negative"]["eigenvalue"] < out["eigenvalues"][-1]
    assert out["density"]["hvps"] == 40
    settings = out["settings"]
    assert settings["probe_examples"] == 200 and settings["bn"] == "eval" and settings["dtype"] == "float64"
    assert set(settings["hvp_mode"].replace("block:", "").replace("single:", "").split("/")) <= {"fwd-rev", "rev-rev"}
    assert settings["seed"] == 0 and settings["num_batches"] == 4

    torch.manual_seed(0)
    model = spec.build().double()
    data = np.load(folder / "data.npz")
    x, y = torch.from_numpy(data["x"][:200]).double(), torch.from_numpy(data["y"][:200])
    ref = lanczos(HessianOperator(Objective(model, cross_entropy, (x, y))), k=3, tol=1e-10, seed=5)
    np.testing.assert_allclose(out["eigenvalues"], ref.eigenvalues.numpy(), rtol=1e-7)


def test_probe_table_is_readable(setup: tuple[Path, Path, ModelSpec]) -> None:
    folder, ckpt, _ = setup
    proc = run("probe", str(ckpt), "--data", f"npz:{folder / 'data.npz'}", "--trace")
    assert proc.returncode == 0, proc.stderr
    assert "λ_max (sharpness)" in proc.stdout and "trace (hutch++)" in proc.stdout
    assert "BN " not in proc.stdout  # no BatchNorm in the model: no BatchNorm policy to state


def test_plain_state_dict_needs_a_factory(setup: tuple[Path, Path, ModelSpec], tmp_path: Path) -> None:
    folder, _, spec = setup
    torch.manual_seed(0)
    torch.save(spec.build().state_dict(), tmp_path / "plain.pt")
    (tmp_path / "mymodels.py").write_text(
        "from sharpscope.models import build_model\n"
        "def make():\n    return build_model('mlp', in_features=12, num_classes=3, widths=[16], activation='tanh')\n")
    data = f"npz:{folder / 'data.npz'}"
    proc = run("probe", str(tmp_path / "plain.pt"), "--data", data, "--json", cwd=tmp_path)
    assert proc.returncode == 1 and "no model spec stored" in proc.stderr and "Traceback" not in proc.stderr
    proc = run("probe", str(tmp_path / "plain.pt"), "--data", data, "--model", "mymodels:make", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["eigenvalues"][0] > 0


@pytest.mark.parametrize("case", ["missing", "truncated", "mismatch", "k-too-large", "bad-data", "nan-data",
                                  "bad-n", "unknown-data"])
def test_bad_input_gives_one_clear_line(setup: tuple[Path, Path, ModelSpec], tmp_path: Path, case: str) -> None:
    folder, ckpt, _ = setup
    data = f"npz:{folder / 'data.npz'}"
    args = {"missing": [str(tmp_path / "nope.safetensors"), "--data", data],
            "k-too-large": [str(ckpt), "--data", data, "--k", "100000"],
            "unknown-data": [str(ckpt), "--data", "imagenet"],
            "bad-n": [str(ckpt), "--data", data, "--n", "0"]}.get(case)
    if case == "truncated":
        blob = ckpt.read_bytes()
        (tmp_path / "cut.safetensors").write_bytes(blob[: len(blob) // 2])
        args = [str(tmp_path / "cut.safetensors"), "--data", data]
    elif case == "mismatch":
        other = ModelSpec("mlp", {"in_features": 12, "num_classes": 3, "widths": [16], "activation": "tanh"})
        torch.save({"0.weight": torch.zeros(4, 4)}, tmp_path / "wrong.pt")
        (tmp_path / "f.py").write_text(f"from sharpscope.models import ModelSpec\ndef make():\n"
                                       f"    return ModelSpec.from_json({other.to_json()!r}).build()\n")
        args = [str(tmp_path / "wrong.pt"), "--data", data, "--model", "f:make"]
    elif case in ("bad-data", "nan-data"):
        x = np.random.default_rng(0).normal(size=(50, 12)).astype(np.float32)
        if case == "bad-data":
            np.savez(tmp_path / "d.npz", x=x, y=np.zeros(49, dtype=np.int64))
        else:
            x[3, 3] = np.nan
            np.savez(tmp_path / "d.npz", x=x, y=np.zeros(50, dtype=np.int64))
        args = [str(ckpt), "--data", f"npz:{tmp_path / 'd.npz'}"]
    proc = run("probe", *args, cwd=tmp_path)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    if case == "bad-n" and "Usage" in proc.stderr:  # rejected by the argument parser itself
        return
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr


def test_malicious_pickle_is_refused_and_never_runs(tmp_path: Path, setup: tuple[Path, Path, ModelSpec]) -> None:
    folder, _, _ = setup
    marker = tmp_path / "pwned"
    payload = (f"import os, pickle\nclass Evil:\n    def __reduce__(self):\n"
               f"        return (os.system, ('touch {marker}',))\n"
               f"import torch\ntorch.save({{'state_dict': Evil()}}, {str(tmp_path / 'evil.pt')!r})\n")
    subprocess.run([sys.executable, "-c", payload], check=True)
    proc = run("probe", str(tmp_path / "evil.pt"), "--data", f"npz:{folder / 'data.npz'}")
    assert proc.returncode == 1 and "--unsafe-load" in proc.stderr
    assert not marker.exists()


def test_demo_runs_the_default_job(tmp_path: Path) -> None:
    proc = run("demo", "--steps", "200", "--out", str(tmp_path), "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["eigenvalues"][0] > 0 and out["trace"]["estimate"] > 0
    assert out["settings"]["data"].startswith("mnist1d") and (tmp_path / "demo.safetensors").exists()
    assert out["settings"]["train_steps"] == 200 and out["hvps"] > 0 and out["trace"]["stderr"] > 0


def test_probe_block_and_fast_products(setup: tuple[Path, Path, ModelSpec]) -> None:
    """--block runs block Lanczos (same top-2 as single-vector); --precision bf16 reports its measured deviation."""
    folder, ckpt, _ = setup
    common = ("probe", str(ckpt), "--data", f"npz:{folder / 'data.npz'}", "--n", "100", "--k", "2", "--tol", "1e-6")
    single = json.loads(run(*common, "--json").stdout)
    block = run(*common, "--json", "--block", "2")
    assert block.returncode == 0, block.stderr
    out = json.loads(block.stdout)
    np.testing.assert_allclose(out["eigenvalues"], single["eigenvalues"], rtol=1e-4)
    assert single["settings"]["product_precision"]["deviation"] is None
    fast = run(*common, "--precision", "bf16")
    assert fast.returncode == 0, fast.stderr
    assert "bf16 products deviate" in " ".join(fast.stdout.split())
    bad = run(*common, "--block", "two")
    assert bad.returncode == 1 and bad.stderr.strip() == "error: --block must be an integer or auto, got 'two'"


def test_probe_density_tol_stops_runs_adaptively(setup: tuple[Path, Path, ModelSpec]) -> None:
    folder, ckpt, _ = setup
    proc = run("probe", str(ckpt), "--data", f"npz:{folder / 'data.npz'}", "--n", "100", "--density", "--density-runs",
               "2", "--density-steps", "40", "--density-tol", "0.05", "--json")
    assert proc.returncode == 0, proc.stderr
    density = json.loads(proc.stdout)["density"]
    assert density["settings"]["tol"] == 0.05 and density["settings"]["stop"] != "fixed steps"
    assert len(density["settings"]["run_steps"]) == 2 and max(density["settings"]["run_steps"]) <= 40
