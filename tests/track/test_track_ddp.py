"""The runner under two gloo processes: records and weights equal one process on all the data; only rank 0 writes.

Each rank holds a contiguous shard (31 and 32 of 63 training examples, 10 and 10 test examples),
so the per-rank batches differ from the single-process ones and sums run in another order: values
agree to rounding (float64), not bit for bit. Rank 1 is handed a different run folder, which
must never appear: every file comes from rank 0. The processes are spawned (a fork
inside a test session that has run threaded tests can deadlock), each on one thread.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from sharpscope.curvature.settings import RUN_DEFAULTS
from sharpscope.io.jsonsafe import without_timings
from sharpscope.track import RunDirectory, TrainConfig, train
from tests.gloo import spawn_ranks

pytestmark = pytest.mark.usefixtures("single_thread")

SCENARIOS: dict[str, dict[str, Any]] = {
    "full-batch-gd": {"trace": True, "trace_method": "hutchinson", "trace_matvecs": 6},
    "minibatch-sgd": {"optimizer": "sgd", "optimizer_kwargs": {"lr": 0.2, "momentum": 0.9}, "batch_size": 20,
                      "loss": "ce"},
    "full-batch-sam": {"optimizer": "sam", "optimizer_kwargs": {"lr": 0.5, "rho": 0.05}},
}
CRASH_AT = 5


def config(**overrides: Any) -> TrainConfig:
    """MNIST-1D, 63 training examples in physical batches of 24, a 40-8-10 tanh MLP, float64."""
    base = TrainConfig(model={"name": "mlp", "kwargs": {"in_features": 40, "num_classes": 10, "widths": [8],
                                                         "activation": "tanh"}},
                       data="mnist1d", n=63, test_data="mnist1d", test_n=20, physical_batch_size=24, steps=6,
                       measure_every=3, checkpoint_every=4, curvature=RUN_DEFAULTS.replace(k=2), loss="mse",
                       optimizer_kwargs={"lr": 0.5},
                       dtype="float64")
    return base.with_overrides(overrides)


class Crash(Exception):
    pass


def crash(step: int, total: int, record: dict | None) -> None:
    if step == CRASH_AT:
        raise Crash


def worker(rank: int, folder: str) -> None:
    root = Path(folder) / ("ranks" if rank == 0 else "rank1-never-written")
    summaries = {name: train(config(**over), root / name).to_json() for name, over in SCENARIOS.items()}
    resumable = config(**SCENARIOS["full-batch-gd"])
    with pytest.raises(Crash):
        train(resumable, root / "resumed", progress=crash)
    summaries["resumed"] = train(resumable, root / "resumed").to_json()
    (Path(folder) / f"summaries{rank}.json").write_text(json.dumps(summaries))


SPLIT_KEYS = ("settings.num_batches", "settings.world_size", "sharding")  # describe the split itself


def numbers(value: Any, prefix: str = "") -> dict[str, Any]:
    """Leaves of nested records by dotted key (``"0.eigenvalues.1"``)."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in numbers(item, f"{prefix}{key}.").items()}
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value) for k, v in numbers(item, f"{prefix}{i}.").items()}
    return {prefix.rstrip("."): value}


def assert_same_values(got: Any, expected: Any, rtol: float = 1e-9) -> None:
    """Equal leaves, floats to ``rtol``; Ritz residuals (rounding-level numbers) and split settings left out."""
    def kept(key: str) -> bool:
        return ".residuals." not in f".{key}" and not any(f".{s}" in f".{key}" for s in SPLIT_KEYS)

    a, b = ({k: v for k, v in numbers(without_timings(r)).items() if kept(k)} for r in (got, expected))
    assert a.keys() == b.keys()
    for key, value in b.items():
        if isinstance(value, float):
            assert math.isclose(a[key], value, rel_tol=rtol, abs_tol=1e-13), (key, a[key], value)
        else:
            assert a[key] == value, (key, a[key], value)


def weights(run: RunDirectory) -> torch.Tensor:
    raw = run.load_checkpoint()
    assert raw is not None
    return torch.cat([t.reshape(-1) for t in raw.state_dict.values()])


def test_two_gloo_ranks_train_like_one_process_and_only_rank0_writes(tmp_path: Path) -> None:
    references = {name: train(config(**over), tmp_path / "single" / name).to_json() for name, over in SCENARIOS.items()}
    spawn_ranks(worker, tmp_path)
    assert not (tmp_path / "rank1-never-written").exists()
    s0, s1 = (json.loads((tmp_path / f"summaries{r}.json").read_text()) for r in (0, 1))
    assert s0 == s1, "every rank returns rank 0's summary"
    for name, reference in references.items():
        run, ref = RunDirectory(tmp_path / "ranks" / name), RunDirectory(tmp_path / "single" / name)
        assert sorted(p.name for p in run.path.iterdir()) == sorted(p.name for p in ref.path.iterdir())
        assert sorted(p.name for p in run.checkpoint_dir.iterdir()) == ["SHA256SUMS", "step-00000006.pt"]
        measured = lambda recs: [r for r in recs if r.get("kind", "measurement") == "measurement"]  # noqa: E731
        records, expected = measured(run.read_metrics()), measured(ref.read_metrics())
        assert [r["step"] for r in records] == [r["step"] for r in expected] == [0, 3, 6]
        assert all(r["settings"]["world_size"] == 2 and r["settings"]["probe_examples"] == 63 for r in records)
        assert_same_values(records, expected)
        torch.testing.assert_close(weights(run), weights(ref), rtol=1e-10, atol=1e-13)
        assert s0[name]["sharding"] == {"scheme": "contiguous", "world_size": 2, "examples_per_rank": [31, 32]}
        assert_same_values({k: v for k, v in s0[name].items() if k not in ("run_dir", "checkpoint")},
                           {k: v for k, v in reference.items() if k not in ("run_dir", "checkpoint")})
    resumed = RunDirectory(tmp_path / "ranks" / "resumed")
    assert s0["resumed"]["session"]["resumed_from_step"] == 4  # both ranks restored rank 0's checkpoint
    assert without_timings(resumed.read_metrics()) == without_timings(
        RunDirectory(tmp_path / "ranks" / "full-batch-gd").read_metrics())
    assert torch.equal(weights(resumed), weights(RunDirectory(tmp_path / "ranks" / "full-batch-gd")))
