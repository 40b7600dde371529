"""The sharded operator: FSDP2 on 2 and 3 gloo ranks against one process, in float64.

Tolerances. The product is a central finite difference at the default step ``h = √ε``; its error is
about ``√ε`` relative (≈ 1.5·10⁻⁸ in float64: rounding of the two gradients over ``h``, the truncation
error ``h²`` being far smaller), so products are compared with exact (double-backward) ones at 1e-6
relative, well above that and far below any error that a wrong weighting, slice or sign would make
(order one). Quantities
computed from the same draws by the sharded and the one-process finite-difference operator differ
only by the order of floating-point sums: 1e-9 relative.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from sharpscope.curvature import HessianOperator, Objective, hutchinson, lanczos, slq_density
from sharpscope.curvature.operators.sharded import ShardedHessianOperator
from sharpscope.errors import ConfigError
from sharpscope.parallel import shard_bounds
from tests.gloo import spawn_ranks

pytestmark = pytest.mark.usefixtures("single_thread")

N = 25  # examples: shards of unequal sizes, and batches of 4 give the ranks different batch counts


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 7), nn.Tanh(), nn.Linear(7, 5), nn.Tanh(), nn.Linear(5, 2)).double()


def make_data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(N, 4, generator=gen, dtype=torch.float64), torch.randint(0, 2, (N,), generator=gen)


def global_index(op: ShardedHessianOperator) -> torch.Tensor:
    """For each local coordinate of ``op``'s vectors, its index in the whole (one-process) vector."""
    parts, start = [], 0
    for s in op.slices:
        parts.append(torch.arange(start + s.offset, start + s.offset + s.numel))
        start += s.global_numel
    return torch.cat(parts)


def one_process(loss: nn.Module) -> tuple[HessianOperator, ShardedHessianOperator]:
    x, y = make_data()
    model = make_model()
    exact = HessianOperator(Objective(model, loss, (x, y), batch_size=4))
    fd = ShardedHessianOperator(Objective(model, loss, (x, y), batch_size=4, validate=False))
    return exact, fd


def reference(folder: Path) -> None:
    """What one process computes, saved for the ranks to compare with (a process group would make the
    one-process objective count every rank's copy of the examples)."""
    exact, single = one_process(nn.CrossEntropyLoss())
    V = single.draw_columns(3, "gaussian", torch.Generator().manual_seed(5))
    torch.save({"V": V, "HV": exact.matmat(V), "top": lanczos(exact, 2, tol=1e-8, seed=3).eigenvalues,
                "trace": hutchinson(single, 6, seed=4, block_size=4).estimate,
                "density": slq_density(single, 8, 2, seed=6)}, folder / "reference.pt")


def rank_work(rank: int, folder: str, world: int) -> None:
    from torch.distributed.fsdp import fully_shard

    ref = torch.load(Path(folder) / "reference.pt", weights_only=False)
    loss = nn.CrossEntropyLoss()
    model = make_model()
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    x, y = make_data()
    lo, hi = shard_bounds(N, world, rank)
    calls = {"n": 0, "fail_at": None}

    def counted_loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        if calls["fail_at"] is not None and calls["n"] >= calls["fail_at"]:
            raise RuntimeError("a loss that fails")
        return loss(out, target)

    op = ShardedHessianOperator(Objective(model, counted_loss, (x[lo:hi], y[lo:hi]), batch_size=4, validate=False))
    assert op.sharded and op.global_dim == ref["V"].shape[0] and op.dim < op.global_dim
    index = global_index(op)
    before = [p.to_local().clone() for p in model.parameters()]

    V = op.draw_columns(3, "gaussian", torch.Generator().manual_seed(5))
    assert torch.equal(V, ref["V"][index])  # the same vectors, sliced
    HV = op.matmat(V)
    product_error = float((HV - ref["HV"][index]).norm() / ref["HV"][index].norm())
    assert all(torch.equal(a, b.to_local()) for a, b in zip(before, model.parameters()))

    assert op.num_batches == (4 if world == 2 else 3)  # every rank runs as many passes as the one with most batches
    calls["n"], calls["fail_at"] = 0, op.num_batches + 1  # fails in the first pass of the second gradient
    with pytest.raises(Exception, match="a loss that fails"):
        op.matvec(V[:, 0])
    calls["fail_at"] = None
    assert all(torch.equal(a, b.to_local()) for a, b in zip(before, model.parameters()))
    assert all(p.grad is None for p in model.parameters())

    top = lanczos(op, 2, tol=1e-8, seed=3)
    trace = hutchinson(op, 6, seed=4, block_size=4)
    bounded = lanczos(op, 1, tol=1e-8, seed=3, memory_budget="8 vectors")
    density = slq_density(op, 8, 2, seed=6)
    assert max(op.lengths_created) == op.dim
    (Path(folder) / f"rank{rank}.json").write_text(json.dumps({
        "product_error": product_error, "top": top.eigenvalues.tolist(), "top_single": ref["top"].tolist(),
        "trace": [trace.estimate, ref["trace"]], "bounded": bounded.eigenvalues.tolist(),
        "bounded_strategy": bounded.settings["memory"]["strategy"],
        "density_trace": [density.trace, ref["density"].trace],
        "nodes": density.nodes.tolist(), "nodes_single": ref["density"].nodes.tolist(),
        "vector_norm": top.eigenvectors.norm(dim=0).pow(2).tolist(), "dim": op.dim}))


@pytest.mark.parametrize("world", [2, 3])
def test_sharded_operator_on_fsdp_ranks_equals_one_process(tmp_path: Path, world: int) -> None:
    reference(tmp_path)
    spawn_ranks(rank_work, tmp_path, world, world=world)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world)]
    first = results[0]
    for r in results:
        assert r["product_error"] < 1e-6
        assert r["top"] == first["top"] and r["trace"] == first["trace"] and r["nodes"] == first["nodes"]
        torch.testing.assert_close(torch.tensor(r["top"]), torch.tensor(r["top_single"]), rtol=1e-6, atol=0)
        torch.testing.assert_close(torch.tensor(r["bounded"][0]), torch.tensor(r["top_single"][0]), rtol=1e-6, atol=0)
        assert r["bounded_strategy"] == "thick restart"
        torch.testing.assert_close(torch.tensor(r["trace"][0]), torch.tensor(r["trace"][1]), rtol=1e-9, atol=0)
        torch.testing.assert_close(torch.tensor(r["nodes"]), torch.tensor(r["nodes_single"]), rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(torch.tensor(r["density_trace"][0]), torch.tensor(r["density_trace"][1]),
                                   rtol=1e-6, atol=0)
    # each rank holds a slice of every eigenvector, and the slices make up unit vectors
    assert sum(r["dim"] for r in results) == 4 * 7 + 7 + 7 * 5 + 5 + 5 * 2 + 2
    norms = torch.tensor([r["vector_norm"] for r in results], dtype=torch.float64).sum(dim=0)
    torch.testing.assert_close(norms, torch.ones(2, dtype=torch.float64), rtol=1e-9, atol=0)


def test_one_process_finite_difference_product_equals_the_exact_one_and_restores_weights() -> None:
    exact, fd = one_process(nn.CrossEntropyLoss())
    model = fd.objective.model
    before = [p.detach().clone() for p in model.parameters()]
    V = torch.randn(fd.dim, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(fd.matmat(V), exact.matmat(V), rtol=1e-6, atol=1e-12)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    assert fd.estimate_error() < 1e-6
    assert fd.precision_record()["deviation"] == fd.fd_error
    assert fd.describe()["gradients"] == 2 * 2 + 4 and not fd.sharded and fd.global_dim == fd.dim


def test_bad_settings_fail_in_one_line() -> None:
    x, y = make_data()
    objective = Objective(make_model(), nn.CrossEntropyLoss(), (x, y), validate=False)
    with pytest.raises(ConfigError, match="step"):
        ShardedHessianOperator(objective, step=0.0)
    with pytest.raises(ConfigError, match="Objective"):
        ShardedHessianOperator(copy.deepcopy(objective.model))  # type: ignore[arg-type]
