"""Per-layer curvature against exact answers: independent per-layer least squares and dense float64 blocks."""

from __future__ import annotations

import json
import warnings
from collections import OrderedDict

import pytest
import torch
from torch import nn

from sharpscope import Objective, exact_hessian
from sharpscope.curvature import parameter_groups, per_layer_curvature
from sharpscope.curvature.settings import CurvatureSettings
from sharpscope.errors import ConfigError
from sharpscope.losses import mse
from sharpscope.probe import ProbeSettings, probe
from tests.curvature.conftest import mlp_data, tiny_mlp

pytestmark = pytest.mark.usefixtures("single_thread")

WIDTHS = (3, 5, 4)


class Parallel(nn.Module):
    """Output ``j`` is a linear model of its own slice of the input: with ``mse`` the loss is a sum of
    independent least-squares problems, so the Hessian is block diagonal with blocks ``[X_j 1]ᵀ[X_j 1]/N``."""

    def __init__(self) -> None:
        super().__init__()
        self.heads = nn.ModuleList(nn.Linear(w, 1) for w in WIDTHS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.split(x, list(WIDTHS), dim=1)
        return torch.cat([head(p) for head, p in zip(self.heads, parts)], dim=1)


def parallel_problem(n: int = 60) -> tuple[nn.Module, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(n, sum(WIDTHS), generator=gen, dtype=torch.float64) * torch.linspace(0.3, 2.5, sum(WIDTHS),
                                                                                          dtype=torch.float64)
    y = torch.randn(n, len(WIDTHS), generator=gen, dtype=torch.float64)
    torch.manual_seed(0)
    model = Parallel().double()
    blocks = []
    for part in torch.split(x, list(WIDTHS), dim=1):
        design = torch.cat([part, torch.ones(n, 1, dtype=torch.float64)], dim=1)  # weight columns, then the bias
        blocks.append(design.T @ design / n)
    return model, x, y, blocks


def dense_blocks(objective: Objective, H: torch.Tensor, groups: dict[str, list[str]]) -> dict[str, torch.Tensor]:
    """The diagonal blocks of the dense Hessian that belong to each group's parameters."""
    offsets, start = {}, 0
    for name, numel in zip(objective.names, objective.numels):
        offsets[name] = torch.arange(start, start + numel)
        start += numel
    out = {}
    for group, names in groups.items():
        idx = torch.cat([offsets[n] for n in names])
        out[group] = H[idx][:, idx]
    return out


def test_independent_layers_give_their_own_least_squares_spectra() -> None:
    model, x, y, blocks = parallel_problem()
    res = per_layer_curvature(model, mse, (x, y), settings=CurvatureSettings(k=2, tol=1e-10, hvp_mode="rev-rev"),
                              trace=True, batch_size=25)
    assert [r.name for r in res.rows] == ["heads.0", "heads.1", "heads.2"] and res.grouping == "module"
    for row, block, width in zip(res.rows, blocks, WIDTHS):
        assert row.parameters == (f"{row.name}.weight", f"{row.name}.bias") and row.numel == width + 1
        exact = torch.linalg.eigvalsh(block).flip(0)[:2]
        torch.testing.assert_close(row.top.eigenvalues, exact, rtol=1e-9, atol=0)
        assert row.top.converged and row.trace is not None
        # Hutch++ sketches min(33, dim) directions: a block this small is captured whole, the trace is exact
        assert row.trace.estimate == pytest.approx(float(block.trace()), rel=1e-10)
        assert row.hvps == row.top.hvps + row.trace.hvps and row.hvp_mode == "rev-rev"
    assert res.hvps == sum(r.hvps for r in res.rows) and res.settings["probe_examples"] == 60
    whole = per_layer_curvature(model, mse, (x, y), groups=1,
                                settings=CurvatureSettings(k=2, tol=1e-10, hvp_mode="rev-rev"))
    (row,) = whole.rows  # depth 1: one block "heads", whose Hessian is the block-diagonal whole
    assert row.name == "heads" and whole.grouping == "depth=1" and row.numel == sum(WIDTHS) + 3
    exact = torch.linalg.eigvalsh(torch.block_diag(*blocks)).flip(0)[:2]
    torch.testing.assert_close(row.top.eigenvalues, exact, rtol=1e-9, atol=0)


def test_layer_blocks_of_networks_match_the_dense_hessian(objective: Objective, reference_hessian: torch.Tensor) -> None:
    """Eigenvalues equal ``eigvalsh`` of the dense diagonal blocks; traces lie within four standard errors."""
    data = [(b.x, b.y) for b in objective.batches]
    res = per_layer_curvature(objective.model, objective.loss_fn, data,
                              settings=CurvatureSettings(k=2, tol=1e-10, trace_method="hutchinson", trace_matvecs=24,
                                                         bn=objective.bn, hvp_mode="rev-rev"),
                              trace=True, seed=3)
    groups = {r.name: list(r.parameters) for r in res.rows}
    assert groups == parameter_groups(objective.model)
    H = reference_hessian
    top = float(torch.linalg.eigvalsh(H)[-1])
    for name, block in dense_blocks(objective, H, groups).items():
        row = next(r for r in res.rows if r.name == name)
        exact = torch.linalg.eigvalsh(block).flip(0)[:2]
        torch.testing.assert_close(row.top.eigenvalues, exact, rtol=1e-8, atol=1e-10)
        assert float(row.top.eigenvalues[0]) <= top + 1e-10  # a diagonal block is never sharper than H
        assert row.trace is not None and row.trace.stderr > 0
        assert abs(row.trace.estimate - float(block.trace())) <= 4 * row.trace.stderr
    assert sum(r.numel for r in res.rows) == objective.dim


def test_a_group_smaller_than_k_and_user_groups() -> None:
    model = tiny_mlp()
    x, y = mlp_data()
    loss = nn.CrossEntropyLoss()
    groups = {"last bias": "2.bias", "weights": ["0.weight", "2.weight"], "first": lambda name, p: name.startswith("0.")}
    with warnings.catch_warnings():  # fwd-rev products must not be recorded by autograd through the other layers
        warnings.simplefilter("error", UserWarning)
        res = per_layer_curvature(model, loss, (x, y),
                                  settings=CurvatureSettings(k=5, tol=1e-10, hvp_mode="fwd-rev",
                                                             trace_method="hutchinson", trace_matvecs=4),
                                  groups=groups, trace=True)
    rows = {r.name: r for r in res.rows}
    assert res.grouping == "custom" and list(rows) == ["last bias", "weights", "first"]
    assert rows["weights"].parameters == ("0.weight", "2.weight") and rows["first"].numel == 42
    objective = Objective(model, loss, (x, y))
    H = exact_hessian(objective)
    blocks = dense_blocks(objective, H, {name: list(r.parameters) for name, r in rows.items()})
    assert rows["last bias"].top.eigenvalues.numel() == 3  # only three parameters: all of its eigenvalues
    for name, row in rows.items():
        exact = torch.linalg.eigvalsh(blocks[name]).flip(0)[:row.top.eigenvalues.numel()]
        torch.testing.assert_close(row.top.eigenvalues, exact, rtol=1e-8, atol=1e-10)
    out = json.loads(json.dumps(res.to_dict()))
    assert [layer["name"] for layer in out["layers"]] == list(rows) and out["layers"][0]["numel"] == 3
    assert out["settings"]["blocks"].startswith("diagonal")


def test_one_group_of_every_parameter_reproduces_the_probe() -> None:
    model = tiny_mlp()
    x, y = mlp_data()
    loss = nn.CrossEntropyLoss()
    report = probe(model, loss, x, y,
                   ProbeSettings(curvature=CurvatureSettings(k=2, hvp_mode="rev-rev"), trace=True, seed=7,
                                 batch_size=16))
    res = per_layer_curvature(model, loss, (x, y), groups={"all": "*"},
                              settings=CurvatureSettings(k=2, hvp_mode="rev-rev"), trace=True,
                              seed=7, batch_size=16)
    (row,) = res.rows
    assert torch.equal(row.top.eigenvalues, report.top.eigenvalues)
    assert report.trace is not None and row.trace is not None and row.trace.estimate == report.trace.estimate


def test_grouping_by_module_and_by_depth() -> None:
    model = nn.Sequential(OrderedDict(
        block1=nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2))), head=nn.Linear(2, 1)))
    model.register_parameter("scale", nn.Parameter(torch.ones(1)))
    model.block1[0].bias.requires_grad_(False)
    assert parameter_groups(model) == {
        "block1.0": ["block1.0.weight"], "block1.1.0": ["block1.1.0.weight", "block1.1.0.bias"],
        "head": ["head.weight", "head.bias"], "scale": ["scale"]}
    assert parameter_groups(model, 1) == {
        "block1": ["block1.0.weight", "block1.1.0.weight", "block1.1.0.bias"], "head": ["head.weight", "head.bias"],
        "scale": ["scale"]}
    assert parameter_groups(model, 2)["block1.1"] == ["block1.1.0.weight", "block1.1.0.bias"]


@pytest.mark.parametrize(("groups", "message"), [
    (0, "positive depth"), (True, "positive depth"), ("layers", "positive depth"), ({}, "is empty"),
    ({"a": "nope.*"}, "layer group 'a': no trainable parameter matches"), ({"a": None}, "layer group 'a' has no"),
])
def test_bad_groupings_name_the_problem(groups: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parameter_groups(tiny_mlp(), groups)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="k must be a positive integer"):
        per_layer_curvature(tiny_mlp(), nn.CrossEntropyLoss(), mlp_data(), settings=CurvatureSettings(k=0))


def test_probe_settings_check_the_layer_options() -> None:
    assert ProbeSettings(per_layer=True, layer_depth=2).layer_depth == 2
    with pytest.raises(ConfigError, match="layer_depth must be a positive depth and needs per_layer=True") as info:
        ProbeSettings(layer_depth=1)
    assert info.value.argument == "layer_depth"
    with pytest.raises(ConfigError, match="layer_depth must be a positive depth"):
        ProbeSettings(per_layer=True, layer_depth=0)


@pytest.mark.parametrize(("setting", "used"), [("auto", True), (False, False)])
def test_each_row_names_the_graph_cache_its_products_used(setting: object, used: bool) -> None:
    model, x, y, _ = parallel_problem()
    res = per_layer_curvature(model, mse, (x, y), settings=CurvatureSettings(hvp_mode="rev-rev", cache_graphs=setting),
                              batch_size=25)
    assert [row.cache_graphs for row in res.rows] == [used] * 3
    assert [row["cache_graphs"] for row in res.to_dict()["layers"]] == [used] * 3  # type: ignore[index]
