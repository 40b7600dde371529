"""Out-of-memory fallback of HessianOperator, simulated on the CPU.

The product function raises ``torch.OutOfMemoryError`` (what CUDA raises) for blocks of more than
``limit`` probe vectors; the operator must halve the failing block until it fits, keep the
smaller size, give the same products as an unconstrained operator, and end with one clear
:class:`SharpscopeError` when even a single product does not fit.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from sharpscope_cli.main import app
from torch import Tensor, nn
from typer.testing import CliRunner

from sharpscope import HessianOperator, Objective
from sharpscope.curvature.operators import hvp
from sharpscope.errors import ObjectiveError, SharpscopeError
from sharpscope.io import save_checkpoint
from sharpscope.models import ModelSpec
from tests.curvature.conftest import mlp_data, tiny_mlp

hessian = importlib.import_module("sharpscope.curvature.operators.hessian")  # the package re-exports names

pytestmark = pytest.mark.usefixtures("single_thread")

MESSAGE = "out of GPU memory for one Hessian-vector product on a batch of 16 examples"


def limited_products(monkeypatch: pytest.MonkeyPatch, limit: int) -> list[int]:
    """Make ``rev-rev`` products fail above ``limit`` vectors; returns the block sizes tried, in order."""
    real: Callable[..., Tensor] = hvp.HVP_MODES["rev-rev"]
    tried: list[int] = []

    def product(objective: Objective, params: dict[str, Tensor], batch: object, rows: Tensor) -> Tensor:
        tried.append(int(rows.shape[0]))
        if rows.shape[0] > limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return real(objective, params, batch, rows)

    monkeypatch.setitem(hvp.HVP_MODES, "rev-rev", product)
    return tried


def objective() -> Objective:
    return Objective(tiny_mlp(), nn.CrossEntropyLoss(), mlp_data(), batch_size=16)  # batches of 16, 16, 8


def test_the_failing_block_is_halved_until_it_fits_and_products_are_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    obj = objective()  # the uncached product path (the graph cache would replace these products)
    V = torch.randn(obj.dim, 11, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = HessianOperator(obj, mode="rev-rev", block_size=8, cache_graphs=False).matmat(V)
    tried = limited_products(monkeypatch, limit=2)
    op = HessianOperator(obj, mode="rev-rev", block_size=8, cache_graphs=False)
    got = op.matmat(V)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)
    assert tried[:3] == [8, 4, 2] and max(tried[3:]) == 2  # 8 and 4 fail once; every later block has 2 vectors
    assert op.block_size == 2 and op.describe()["block_size"] == 2
    tried.clear()
    op.matmat(V)  # the smaller size is kept: no more failures
    assert max(tried) == 2 and len(tried) == 3 * 6  # three batches, 11 vectors in blocks of 2


def test_a_single_product_that_does_not_fit_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    obj = objective()
    tried = limited_products(monkeypatch, limit=0)
    op = HessianOperator(obj, mode="rev-rev", block_size=8, cache_graphs=False)
    with pytest.raises(ObjectiveError, match=MESSAGE) as info:
        op.matmat(torch.ones(obj.dim, 8, dtype=torch.float64))
    assert isinstance(info.value, SharpscopeError) and "batch_size" in str(info.value)
    assert tried == [8, 4, 2, 1]
    tried.clear()
    with pytest.raises(ObjectiveError, match=MESSAGE):
        HessianOperator(obj, mode="rev-rev", block_size=8, cache_graphs=False).matvec(torch.ones(obj.dim, dtype=torch.float64))
    assert tried == [1]  # a single vector cannot be split: no pointless retries


def test_the_cli_reports_it_in_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    x, y = mlp_data()
    np.savez(tmp_path / "data.npz", x=x.numpy(), y=y.numpy())
    spec = ModelSpec("mlp", {"in_features": 5, "num_classes": 3, "widths": [4]})
    ckpt = save_checkpoint(tmp_path / "m.safetensors", spec.build(), spec=spec)
    limited_products(monkeypatch, limit=0)
    result = CliRunner().invoke(app, ["probe", str(ckpt), "--data", f"npz:{tmp_path / 'data.npz'}",
                                      "--hvp-mode", "rev-rev", "--no-cache-graphs", "--batch-size", "16",
                                      "--json"])
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.startswith("error: " + MESSAGE) and result.stderr.count("\n") == 1


def test_a_graph_cache_that_runs_out_of_memory_falls_back_to_uncached_products(monkeypatch: pytest.MonkeyPatch) -> None:
    obj = objective()
    V = torch.randn(obj.dim, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = HessianOperator(obj, mode="rev-rev", cache_graphs=False).matmat(V)
    real, built = hessian.gradient_graph, []

    def graph(*args: object) -> object:
        if built:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        built.append(1)
        return real(*args)

    monkeypatch.setattr(hessian, "gradient_graph", graph)
    op = HessianOperator(obj, mode="rev-rev")
    torch.testing.assert_close(op.matmat(V), expected, rtol=1e-12, atol=1e-14)
    record = op.describe()["mode_selection"]["cache_graphs"]
    assert record["chosen"] is False and "out of memory" in record["reason"] and not op._graphs
