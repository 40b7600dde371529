"""Data-parallel curvature: two gloo processes, each holding a shard, match one process holding all."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from sharpscope import HessianOperator, Objective, hutchinson, lanczos
from tests.curvature.conftest import mlp_data, tiny_mlp
from tests.gloo import spawn_ranks

CUT = 17  # unequal shards: rank 0 holds 17 examples, rank 1 holds 23


def measure(objective: Objective) -> dict[str, object]:
    op = HessianOperator(objective)
    top = lanczos(op, k=3, tol=1e-10, seed=0)
    trace = hutchinson(op, 24, seed=0)
    return {"eigenvalues": top.eigenvalues.tolist(), "trace": trace.estimate, "stderr": trace.stderr,
            "loss": objective.loss(), "grad": objective.gradient().tolist(), "examples": objective.num_examples,
            "world_size": op.describe()["world_size"], "modes": op.modes}


def rank_main(rank: int, folder: str) -> None:
    x, y = mlp_data()
    shard = slice(0, CUT) if rank == 0 else slice(CUT, None)
    objective = Objective(tiny_mlp(), nn.CrossEntropyLoss(), (x[shard], y[shard]), batch_size=10)
    (Path(folder) / f"rank{rank}.json").write_text(json.dumps(measure(objective)))


def test_two_gloo_ranks_match_one_process(tmp_path: Path) -> None:
    spawn_ranks(rank_main, tmp_path)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    single = measure(Objective(tiny_mlp(), nn.CrossEntropyLoss(), mlp_data(), batch_size=10))
    assert ranks[0] == ranks[1], "every rank must hold the same results"
    got = ranks[0]
    assert got["world_size"] == 2 and got["examples"] == single["examples"] == 40
    torch.testing.assert_close(torch.tensor(got["eigenvalues"]), torch.tensor(single["eigenvalues"]),
                               rtol=1e-6, atol=0)
    assert abs(got["trace"] - single["trace"]) <= 1e-9 * abs(single["trace"])
    assert abs(got["loss"] - single["loss"]) <= 1e-12
    torch.testing.assert_close(torch.tensor(got["grad"]), torch.tensor(single["grad"]), rtol=1e-10, atol=1e-12)
