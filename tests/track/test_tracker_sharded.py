"""The tracker on a model sharded with FSDP2 (two gloo ranks) against one process, in float64.

λ_max and the gradient norm are compared with exact one-process values (finite-difference products at
``h = √ε``: 1e-6 relative, as in the sharded operator's own tests); losses and accuracies are sums of
the same per-batch numbers in another order (1e-12); the trace comes from the same blocked draws as a
one-process sharded operator's, so it differs only by the order of sums (1e-7 relative).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from sharpscope.curvature import HessianOperator, Objective, lanczos, trace_estimator
from sharpscope.curvature.operators.sharded import ShardedHessianOperator
from sharpscope.curvature.settings import CurvatureSettings
from sharpscope.errors import ConfigError
from sharpscope.parallel import shard_bounds
from sharpscope.track.tracker import SharpnessTracker, step_seed
from tests.gloo import spawn_ranks

pytestmark = pytest.mark.usefixtures("single_thread")

N, N_TEST, SEED = 22, 13, 7
CURVATURE = CurvatureSettings(k=1, tol=1e-8, trace_matvecs=9)


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()


def make_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=gen, dtype=torch.float64), torch.randint(0, 3, (n,), generator=gen)


def tracker(train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor] | None,
            update: str | None = None) -> SharpnessTracker:
    return SharpnessTracker(train, nn.CrossEntropyLoss(), every=1, curvature=CURVATURE, trace=True,
                            grad_norm=True, test_data=test, batch_size=4, seed=SEED, update_curvature=update)


def step_deltas(model: nn.Module) -> list[torch.Tensor]:
    """A fixed update per parameter (whole tensors), the same in every process."""
    gen = torch.Generator().manual_seed(3)
    return [0.05 * torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in model.parameters()]


def update_readings(model: nn.Module, train: tuple[torch.Tensor, torch.Tensor], sharded: bool) -> dict[str, float]:
    """κ_u of one fixed step, by each method (the weights are put back after each)."""
    out = {}
    for method in ("hvp", "fd"):
        t = tracker(train, None, update=method)
        before = [p.detach().clone() for p in model.parameters()]
        t.before_step(0, model)
        with torch.no_grad():
            for p, delta in zip(model.parameters(), step_deltas(model)):
                if sharded:
                    from torch.distributed.tensor import distribute_tensor

                    delta = distribute_tensor(delta, p.device_mesh, p.placements)
                p.add_(delta)
        t.after_step(0, model)
        assert t.last_update is not None
        out[method] = t.last_update.kappa
        out[f"{method}_cost"] = t.last_update.hvps + t.last_update.forwards
        with torch.no_grad():
            for p, b in zip(model.parameters(), before):
                p.copy_(b)
    return out


def reference(folder: Path) -> None:
    """One process: the tracker's records, and the trace a one-process sharded operator draws."""
    model, train, test = make_model(), make_data(N, 1), make_data(N_TEST, 2)
    records = [tracker(train, test).measure(0, model).to_json()]
    objective = Objective(model, nn.CrossEntropyLoss(), train, batch_size=4, validate=False)
    fd = ShardedHessianOperator(objective)
    records[0]["fd_trace"] = trace_estimator(CURVATURE.trace_method)(fd, CURVATURE.trace_matvecs,
                                                                     seed=step_seed(SEED, 0, 2)).estimate
    records[0]["exact_top"] = float(lanczos(HessianOperator(objective), 1, tol=1e-10, seed=0).eigenvalues[0])
    records[0]["update"] = update_readings(model, train, sharded=False)
    (folder / "reference.json").write_text(json.dumps(records[0]))


def rank_work(rank: int, folder: str) -> None:
    from torch.distributed.fsdp import fully_shard

    model = make_model()
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    (x, y), (xt, yt) = make_data(N, 1), make_data(N_TEST, 2)
    lo, hi = shard_bounds(N, 2, rank)
    tlo, thi = shard_bounds(N_TEST, 2, rank)
    t = tracker((x[lo:hi], y[lo:hi]), (xt[tlo:thi], yt[tlo:thi]))
    first, again = t.measure(0, model).to_json(), t.measure(1, model).to_json()  # the second starts from the first's eigenvector
    update = update_readings(model, (x[lo:hi], y[lo:hi]), sharded=True)
    with pytest.raises(ConfigError, match="alignment=True"):
        SharpnessTracker((x, y), nn.CrossEntropyLoss(), every=1, alignment=True).measure(0, model)
    (Path(folder) / f"rank{rank}.json").write_text(json.dumps({"first": first, "again": again, "update": update}))


def timeless(record: object) -> object:
    """``record`` without its wall-clock entries (which differ between ranks)."""
    if isinstance(record, dict):
        return {k: timeless(v) for k, v in record.items() if k not in ("cost", "seconds")}
    return record


def test_tracker_on_a_sharded_model_records_what_one_process_measures(tmp_path: Path) -> None:
    reference(tmp_path)
    spawn_ranks(rank_work, tmp_path, world=2)
    ref = json.loads((tmp_path / "reference.json").read_text())
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for got in ranks:
        rec = got["first"]
        assert timeless(rec) == timeless(ranks[0]["first"])  # every rank records the same numbers
        torch.testing.assert_close(torch.tensor(rec["eigenvalues"]), torch.tensor(ref["eigenvalues"]),
                                   rtol=1e-6, atol=0)
        torch.testing.assert_close(torch.tensor(rec["grad_norm"]), torch.tensor(ref["grad_norm"]), rtol=1e-9, atol=0)
        for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
            torch.testing.assert_close(torch.tensor(rec[key]), torch.tensor(ref[key]), rtol=1e-12, atol=0)
        torch.testing.assert_close(torch.tensor(rec["trace"]["estimate"]), torch.tensor(ref["fd_trace"]),
                                   rtol=1e-7, atol=0)
        assert rec["settings"]["hvp_mode"] == "finite difference (sharded)"
        assert rec["settings"]["shard"]["world_size"] == 2 and rec["settings"]["dim"] == ref["settings"]["dim"]
        assert got["again"]["warm_start"] is True
        torch.testing.assert_close(torch.tensor(got["again"]["eigenvalues"]), torch.tensor(ref["exact_top"]).reshape(1),
                                   rtol=1e-6, atol=0)
        # κ_u: a finite-difference product against the exact one (1e-6); the three-loss form sums the same
        # per-batch losses in another order (1e-9); one product and three forward passes
        torch.testing.assert_close(torch.tensor(got["update"]["hvp"]), torch.tensor(ref["update"]["hvp"]),
                                   rtol=1e-6, atol=0)
        torch.testing.assert_close(torch.tensor(got["update"]["fd"]), torch.tensor(ref["update"]["fd"]),
                                   rtol=1e-9, atol=0)
        assert (got["update"]["hvp_cost"], got["update"]["fd_cost"]) == (1, 3)
