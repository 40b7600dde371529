"""``sharpscope probe`` under torchrun: two gloo ranks, each probing its shard, print what one process prints.

The default test spawns two processes that set torchrun's variables (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) and run the CLI in-process, which is the whole
of what torchrun hands a worker; the slow test launches ``python -m torch.distributed.run`` itself.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from sharpscope_cli.main import app
from typer.testing import CliRunner

from sharpscope.errors import ConfigError, SharpscopeError
from sharpscope.io import save_checkpoint
from sharpscope.models import ModelSpec
from sharpscope.parallel import on_rank0, shard_bounds, sharding, torchrun_env
from tests.gloo import finished, start_tolerating_teardown

pytestmark = pytest.mark.usefixtures("single_thread")

N = 101  # odd: shards of 50 and 51 examples, cut into batches of 32 unlike the single-process run
ARGS = ("--dtype", "float64", "--k", "3", "--tol", "1e-10", "--negative", "--trace", "--trace-method", "hutchinson",
        "--trace-matvecs", "12", "--batch-size", "32", "--json")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("probe")
    gen = torch.Generator().manual_seed(0)
    np.savez(folder / "data.npz", x=torch.randn(N, 6, generator=gen).numpy(),
             y=torch.randint(0, 3, (N,), generator=gen).numpy())
    spec = ModelSpec("mlp", {"in_features": 6, "num_classes": 3, "widths": [8], "activation": "tanh"})
    torch.manual_seed(0)
    return save_checkpoint(folder / "model.safetensors", spec.build(), spec=spec), folder / "data.npz"


def probe_args(files: tuple[Path, Path], *extra: str) -> list[str]:
    return ["probe", str(files[0]), "--data", f"npz:{files[1]}", *ARGS, *extra]


def assert_same_probe(got: dict, single: dict) -> None:
    """Equal to rounding: every eigenvalue 1e-9 relative (sums run in another order), costs exactly."""
    np.testing.assert_allclose(got["eigenvalues"], single["eigenvalues"], rtol=1e-9)
    assert math.isclose(got["most_negative"]["eigenvalue"], single["most_negative"]["eigenvalue"], rel_tol=1e-9)
    assert math.isclose(got["trace"]["estimate"], single["trace"]["estimate"], rel_tol=1e-9)
    assert math.isclose(got["loss"], single["loss"], rel_tol=1e-12)
    assert math.isclose(got["grad_norm"], single["grad_norm"], rel_tol=1e-10)
    assert (got["hvps"], got["trace"]["hvps"]) == (single["hvps"], single["trace"]["hvps"])
    assert got["settings"]["probe_examples"] == single["settings"]["probe_examples"] == N
    assert (got["settings"]["world_size"], single["settings"]["world_size"]) == (2, 1)
    assert got["settings"]["sharding"] == {"scheme": "contiguous", "world_size": 2, "examples_per_rank": [50, 51]}
    assert single["settings"]["sharding"] == {"scheme": "contiguous", "world_size": 1, "examples_per_rank": [N]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def worker(rank: int, port: int, folder: str, args: list[str], tiny_args: list[str]) -> None:
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    runner = CliRunner()
    probe = runner.invoke(app, args)  # joins the process group from the environment
    assert dist.is_initialized() and dist.get_world_size() == 2
    too_few = runner.invoke(app, tiny_args)  # one example for two ranks: both ranks refuse cleanly
    try:
        on_rank0(lambda: 1 / (dist.get_rank() - 0))  # rank 0 fails with a non-sharpscope error
    except ZeroDivisionError:
        shared = "ZeroDivisionError"
    except SharpscopeError as e:
        shared = str(e)
    out = {"code": probe.exit_code, "stdout": probe.stdout, "stderr": probe.stderr, "too_few": too_few.exit_code,
           "too_few_stderr": too_few.stderr, "shared": shared}
    (Path(folder) / f"rank{rank}.json").write_text(json.dumps(out))
    finished(rank, folder)
    dist.barrier()
    dist.destroy_process_group()


def test_two_ranks_under_torchrun_variables_print_the_single_process_probe(files: tuple[Path, Path],
                                                                          tmp_path: Path) -> None:
    single = CliRunner().invoke(app, probe_args(files))
    assert single.exit_code == 0, single.stderr
    tiny = ["probe", str(files[0]), "--data", f"npz:{files[1]}", "--n", "1", "--json"]
    start_tolerating_teardown(worker, (free_port(), str(tmp_path), probe_args(files), tiny), tmp_path)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["code"] == r1["code"] == 0, (r0["stderr"], r1["stderr"])
    assert r1["stdout"] == "" and r0["stdout"].count("\n") == 1  # only rank 0 prints
    assert_same_probe(json.loads(r0["stdout"]), json.loads(single.stdout))
    for r in (r0, r1):
        assert r["too_few"] == 1 and r["too_few_stderr"].count("\n") == 1
        assert "1 example(s) cannot be split over 2 ranks" in r["too_few_stderr"]
    assert r0["shared"] == "ZeroDivisionError" and r1["shared"] == "rank 0 failed: ZeroDivisionError: division by zero"


def fsdp_worker(rank: int, port: int, folder: str, args: list[str]) -> None:
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    result = CliRunner().invoke(app, args)
    (Path(folder) / f"rank{rank}.json").write_text(json.dumps({"code": result.exit_code, "stdout": result.stdout,
                                                               "stderr": result.stderr}))
    finished(rank, folder)
    dist.barrier()
    dist.destroy_process_group()


def test_sharded_probe_on_two_ranks_finds_the_single_process_eigenvalues(files: tuple[Path, Path],
                                                                         tmp_path: Path) -> None:
    """``--shard fsdp``: parameters and examples split over two ranks, finite-difference products; the
    eigenvalues agree with the exact single-process ones to the finite differences' accuracy (1e-6)."""
    single = json.loads(CliRunner().invoke(app, probe_args(files)).stdout)
    start_tolerating_teardown(fsdp_worker, (free_port(), str(tmp_path), probe_args(files, "--shard", "fsdp")),
                              tmp_path)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["code"] == r1["code"] == 0, (r0["stderr"], r1["stderr"])
    assert r1["stdout"] == "" and r0["stdout"].count("\n") == 1  # only rank 0 prints
    got = json.loads(r0["stdout"])
    np.testing.assert_allclose(got["eigenvalues"], single["eigenvalues"], rtol=1e-6)
    assert math.isclose(got["most_negative"]["eigenvalue"], single["most_negative"]["eigenvalue"], rel_tol=1e-6)
    assert math.isclose(got["loss"], single["loss"], rel_tol=1e-12)
    assert math.isclose(got["grad_norm"], single["grad_norm"], rel_tol=1e-10)
    settings = got["settings"]
    assert settings["shard"] == "fsdp" and settings["world_size"] == 2 and settings["sharded"] is True
    assert settings["global_dim"] == single["settings"]["dim"] > settings["dim"]
    assert settings["product"] == "central finite difference of two sharded gradients"
    assert got["trace"]["stderr"] > 0


@pytest.mark.slow
def test_torchrun_launch_prints_the_single_process_probe(files: tuple[Path, Path]) -> None:
    single = CliRunner().invoke(app, probe_args(files))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "sharpscope_cli.main", *probe_args(files)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("\n") == 1
    assert_same_probe(json.loads(proc.stdout), json.loads(single.stdout))


def test_shards_partition_the_examples_and_the_environment_is_read_strictly(monkeypatch: pytest.MonkeyPatch) -> None:
    for n in (3, 7, 100, 101):
        for w in (1, 2, 3):
            bounds = [shard_bounds(n, w, r) for r in range(w)]
            assert bounds[0][0] == 0 and bounds[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
            assert max(hi - lo for lo, hi in bounds) - min(hi - lo for lo, hi in bounds) <= 1
    assert sharding(10) == {"scheme": "contiguous", "world_size": 1, "examples_per_rank": [10]}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert torchrun_env() is None
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert torchrun_env() is None  # one process: nothing to initialise
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert torchrun_env() == (2, 4, 0)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ConfigError, match="inconsistent"):
        torchrun_env()
    monkeypatch.setenv("RANK", "two")
    with pytest.raises(ConfigError, match="not numeric"):
        torchrun_env()
    monkeypatch.delenv("RANK")
    with pytest.raises(ConfigError, match="inconsistent"):  # every process would think it is rank 0
        torchrun_env()
    assert on_rank0(lambda: 5) == 5  # no process group: just the call
