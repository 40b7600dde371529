"""Batches of any structure, adapters, loss closures, example counts and streaming, against dense Hessians.

References are dense float64 Hessians of hand-written objectives (``torch.autograd.functional.hessian``
of a function of the flat parameters), independent of the objective's batch handling.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils.data import DataLoader, TensorDataset

from sharpscope import ConfigError, DataError, HessianOperator, Objective, ObjectiveError, exact_hessian, lanczos
from sharpscope.curvature import DropoutWarning, ReductionWarning
from tests.curvature.conftest import mlp_data, tiny_mlp

MODES = ("fwd-rev", "rev-rev")


def dense_reference(model: nn.Module, total_loss: Callable[[Callable[[Tensor], Tensor]], Tensor]) -> Tensor:
    """``∇²`` of ``total_loss(f)`` over all trainable parameters, where ``f(x)`` is the model at those values."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    shapes = [p.shape for n, p in model.named_parameters() if p.requires_grad]
    theta = torch.cat([p.detach().reshape(-1) for n, p in model.named_parameters() if p.requires_grad])

    def fn(flat: Tensor) -> Tensor:
        parts = torch.split(flat, [s.numel() for s in shapes])
        params = {n: t.reshape(s) for n, t, s in zip(names, parts, shapes)}
        return total_loss(lambda *args, **kw: functional_call(model, params, args, kw))

    with torch.no_grad():
        model.eval()
    return torch.autograd.functional.hessian(fn, theta)


def assert_products_match(objective: Objective, reference: Tensor) -> None:
    torch.testing.assert_close(exact_hessian(objective), reference, rtol=1e-10, atol=1e-12)
    gen = torch.Generator().manual_seed(5)
    V = torch.randn(objective.dim, 3, generator=gen, dtype=torch.float64)
    for mode in MODES:
        torch.testing.assert_close(HessianOperator(objective, mode=mode).matmat(V), reference @ V,
                                   rtol=1e-10, atol=1e-12)


class DictOut(nn.Module):
    """The tiny MLP behind a keyword interface that returns ``{"logits": ...}``, like a Hugging Face model."""

    def __init__(self) -> None:
        super().__init__()
        self.net = tiny_mlp()

    def forward(self, x: Tensor, labels: Tensor | None = None) -> dict[str, Tensor]:
        return {"logits": self.net(x)}


def test_dict_batches_and_dict_outputs_match_the_dense_hessian() -> None:
    x, y = mlp_data(30)
    model = DictOut()
    batches = [{"x": x[a:b], "labels": y[a:b]} for a, b in ((0, 11), (11, 30))]
    objective = Objective(model, lambda logits, batch: F.cross_entropy(logits, batch["labels"]), batches)
    reference = dense_reference(model, lambda f: F.cross_entropy(f(x)["logits"], y))
    assert_products_match(objective, reference)
    info = objective.describe()
    assert info["probe_examples"] == 30 and info["reduction_check"] == "mean" and info["data"] == "in memory"


def test_tuple_batches_give_the_loss_the_whole_batch() -> None:
    x, y = mlp_data(24)
    w = torch.linspace(0.5, 2.0, 24, dtype=torch.float64)
    model = tiny_mlp()
    batches = [(x[a:b], y[a:b], w[a:b]) for a, b in ((0, 10), (10, 24))]
    weighted = lambda out, b: (F.cross_entropy(out, b[1], reduction="none") * b[2]).mean()  # noqa: E731
    objective = Objective(model, weighted, batches)
    reference = dense_reference(model, lambda f: (F.cross_entropy(f(x), y, reduction="none") * w).mean())
    assert_products_match(objective, reference)


def test_loss_closure_on_the_model() -> None:
    x, y = mlp_data(20)
    model = DictOut()
    closure = lambda m, b: F.cross_entropy(m(b["x"])["logits"], b["labels"])  # noqa: E731
    objective = Objective(model, None, {"x": x, "labels": y}, closure=closure, batch_size=8)
    assert objective.describe()["loss_closure"] is True and len(objective.batches) == 3
    assert_products_match(objective, dense_reference(model, lambda f: F.cross_entropy(f(x)["logits"], y)))
    with pytest.raises(ObjectiveError, match="closure"):
        objective.output_and_loss(objective.param_values(), objective.batches[0])


def test_output_and_loss_gives_the_adapted_output_and_the_batch_loss() -> None:
    x, y = mlp_data(12)
    model = DictOut()
    objective = Objective(model, lambda logits, b: F.cross_entropy(logits, b["labels"]), {"x": x, "labels": y})
    with objective.mode():
        out, loss_of = objective.output_and_loss(objective.param_values(), objective.batches[0])
    torch.testing.assert_close(out, model.net(x))
    torch.testing.assert_close(loss_of(out), F.cross_entropy(model.net(x), y))


def test_a_loss_that_indexes_the_raw_output_gets_a_clear_error_and_the_identity_adapter() -> None:
    x, y = mlp_data(12)
    model = DictOut()
    indexing = lambda out, b: F.cross_entropy(out["logits"], b["labels"])  # noqa: E731
    with pytest.raises(ObjectiveError, match="output adapter"):
        Objective(model, indexing, {"x": x, "labels": y})
    raw = Objective(model, indexing, {"x": x, "labels": y}, output=lambda o: o)
    assert_products_match(raw, dense_reference(model, lambda f: F.cross_entropy(f(x)["logits"], y)))


class TokenModel(nn.Module):
    """Embedding and a per-token tanh layer: logits ``(B, T, V)`` for token ids ``(B, T)``."""

    def __init__(self, vocab: int = 6, width: int = 3) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.embed = nn.Embedding(vocab, width).double()
        self.head = nn.Linear(width, vocab).double()

    def forward(self, input_ids: Tensor, mask: Tensor | None = None, labels: Tensor | None = None) -> Tensor:
        return self.head(torch.tanh(self.embed(input_ids)))


def token_batch() -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(6)
    ids = torch.randint(0, 6, (5, 7), generator=gen)
    lengths = torch.tensor([7, 2, 5, 1, 4])
    mask = (torch.arange(7)[None, :] < lengths[:, None]).long()
    return {"input_ids": ids, "mask": mask, "labels": torch.roll(ids, 1, dims=1)}


def token_mean(logits: Tensor, batch: dict[str, Tensor]) -> Tensor:
    per_token = F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), reduction="none")
    mask = batch["mask"].flatten().to(per_token.dtype)
    return (per_token * mask).sum() / mask.sum()


def test_token_counts_make_the_objective_the_mean_over_tokens_for_any_split() -> None:
    model, batch = TokenModel(), token_batch()
    count = lambda b: b["mask"].sum()  # noqa: E731
    whole = Objective(model, token_mean, batch, count_fn=count)
    split = Objective(model, token_mean, batch, count_fn=count, batch_size=2)
    assert whole.num_examples == split.num_examples == int(batch["mask"].sum())
    reference = dense_reference(model, lambda f: token_mean(f(batch["input_ids"]), batch))
    assert_products_match(whole, reference)
    assert_products_match(split, reference)
    with pytest.warns(ReductionWarning, match="mean or a sum"):  # a token mean is no mean over rows
        by_rows = Objective(model, token_mean, batch, batch_size=2)  # sequences weighted equally: another objective
    assert (exact_hessian(by_rows) - reference).abs().max() > 1e-3


def test_streamed_source_equals_the_in_memory_objective() -> None:
    x, y = mlp_data(40)
    loader = DataLoader(TensorDataset(x, y), batch_size=7, shuffle=False)
    streamed = Objective(tiny_mlp(), nn.CrossEntropyLoss(), loader)
    memory = Objective(tiny_mlp(), nn.CrossEntropyLoss(), (x, y), batch_size=7)
    assert streamed.describe()["data"] == "streamed" and memory.describe()["data"] == "in memory"
    assert len(streamed.batches) == 6 and streamed.num_examples == 40
    dense = exact_hessian(memory)
    torch.testing.assert_close(exact_hessian(streamed), dense, rtol=1e-10, atol=1e-12)
    V = torch.randn(streamed.dim, 4, dtype=torch.float64)
    for mode in MODES:
        torch.testing.assert_close(HessianOperator(streamed, mode=mode).matmat(V),
                                   HessianOperator(memory, mode=mode).matmat(V), rtol=1e-10, atol=1e-12)
    top_s = lanczos(HessianOperator(streamed, mode="rev-rev"), k=1, tol=1e-10, seed=0).eigenvalues
    top_m = lanczos(HessianOperator(memory, mode="rev-rev"), k=1, tol=1e-10, seed=0).eigenvalues
    torch.testing.assert_close(top_s, top_m, rtol=1e-10, atol=0)
    listed = Objective(tiny_mlp(), nn.CrossEntropyLoss(), [(x[:20], y[:20]), (x[20:], y[20:])], stream=True)
    host = Objective(tiny_mlp(), nn.CrossEntropyLoss(), (x, y), batch_size=7, stream=True)
    for objective in (listed, host):
        assert objective.describe()["data"] == "streamed" and objective.describe()["data_reason"] == "requested"
        torch.testing.assert_close(exact_hessian(objective), dense, rtol=1e-10, atol=1e-12)


def test_streaming_refuses_shuffled_and_changing_sources() -> None:
    x, y = mlp_data(20)
    with pytest.raises(ConfigError, match="shuffles"):
        Objective(tiny_mlp(), nn.CrossEntropyLoss(), DataLoader(TensorDataset(x, y), batch_size=5, shuffle=True))
    with pytest.raises(ConfigError, match="one-shot"):
        Objective(tiny_mlp(), nn.CrossEntropyLoss(), iter([(x, y)]), stream=True)

    class Growing:
        def __init__(self) -> None:
            self.passes = 0

        def __iter__(self):  # noqa: ANN204
            self.passes += 1
            yield x[: 10 + self.passes], y[: 10 + self.passes]

    objective = Objective(tiny_mlp(), nn.CrossEntropyLoss(), Growing(), validate=False)
    with pytest.raises(DataError, match="same batches"):
        objective.loss()


def test_sum_reduced_losses_are_refused_or_rescaled_as_declared() -> None:
    x, y = mlp_data(30)
    with pytest.raises(ObjectiveError, match="sum over the batch"):
        Objective(tiny_mlp(), nn.CrossEntropyLoss(reduction="sum"), (x, y))
    mean = exact_hessian(Objective(tiny_mlp(), nn.CrossEntropyLoss(), (x, y)))
    summed = Objective(tiny_mlp(), nn.CrossEntropyLoss(reduction="sum"), (x, y), reduction="sum", batch_size=7)
    assert summed.describe()["reduction_check"] == "sum"
    torch.testing.assert_close(exact_hessian(summed), mean, rtol=1e-10, atol=1e-12)
    v = torch.randn(summed.dim, dtype=torch.float64)
    for mode in MODES:
        torch.testing.assert_close(HessianOperator(summed, mode=mode).matvec(v), mean @ v, rtol=1e-10, atol=1e-12)
    with pytest.raises(ObjectiveError, match="mean over the batch, not a sum"):
        Objective(tiny_mlp(), nn.CrossEntropyLoss(), (x, y), reduction="sum")


def test_a_model_fixed_to_one_batch_size_is_measured_with_the_check_left_out() -> None:
    x, y = mlp_data(12)
    net = tiny_mlp()
    fixed = lambda m, b: F.cross_entropy(m(b[0]).reshape(12, 3), b[1])  # noqa: E731  (only whole batches)
    with pytest.warns(ReductionWarning, match="half a batch fails"):
        objective = Objective(net, None, (x, y), closure=fixed)
    assert objective.describe()["reduction_check"].startswith("not checked")
    assert_products_match(objective, dense_reference(net, lambda f: F.cross_entropy(f(x), y)))


def test_low_precision_models_compute_in_float32_unless_asked() -> None:
    x, y = mlp_data(16)
    model = tiny_mlp().to(torch.bfloat16)
    model.train()
    upcast = Objective(model, nn.CrossEntropyLoss(), (x, y))
    info = upcast.describe()
    assert upcast.dtype == torch.float32 and info["upcast"] is True and info["param_dtype"] == "bfloat16"
    reference = tiny_mlp().double()  # the bf16 weights, exactly, in float64
    reference.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    dense = exact_hessian(Objective(reference, nn.CrossEntropyLoss(), (x, y))).float()
    v = torch.randn(upcast.dim)
    for mode in MODES:
        hv = HessianOperator(upcast, mode=mode).matvec(v)
        assert hv.dtype == torch.float32
        torch.testing.assert_close(hv, dense @ v, rtol=1e-4, atol=1e-5)
    block = Objective(model, nn.CrossEntropyLoss(), (x, y), params="2.*")  # the rest of the model upcast too
    tail = slice(upcast.dim - block.dim, upcast.dim)
    torch.testing.assert_close(HessianOperator(block, mode="fwd-rev").matvec(v[tail]), dense[tail, tail] @ v[tail],
                               rtol=1e-4, atol=1e-5)
    native = Objective(model, nn.CrossEntropyLoss(), (x, y), weight_precision="native")
    assert native.dtype == torch.bfloat16 and native.describe()["upcast"] is False
    # the weights and their gradients stay bf16; the operator's vectors (what algorithms hold) are float32
    assert HessianOperator(native, mode="rev-rev").matvec(v).dtype == torch.float32
    assert all(p.dtype == torch.bfloat16 for p in model.parameters()) and model.training


def test_dropout_in_train_mode_warns_unless_declared_and_is_off() -> None:
    x, y = mlp_data(16)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Dropout(0.5), nn.Tanh(), nn.Linear(7, 3)).double()
    model.train()
    with pytest.warns(DropoutWarning, match="dropout"):
        warned = Objective(model, nn.CrossEntropyLoss(), (x, y))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        declared = Objective(model, nn.CrossEntropyLoss(), (x, y), dropout="off")
    assert model.training and declared.describe()["dropout"] == "off"
    reference = dense_reference(model, lambda f: F.cross_entropy(f(x), y))  # eval mode: dropout off
    model.train()
    assert_products_match(warned, reference)


LOSSES = {
    "MSELoss": (nn.MSELoss(), "float"),
    "F.mse_loss": (F.mse_loss, "float"),
    "CE-label-smoothing": (nn.CrossEntropyLoss(label_smoothing=0.1), "class"),
    "BCEWithLogitsLoss": (nn.BCEWithLogitsLoss(), "binary"),
}


@pytest.mark.parametrize("name", list(LOSSES))
def test_losses_that_trip_torch_func_work_in_both_modes(name: str) -> None:
    loss_fn, kind = LOSSES[name]
    x, labels = mlp_data(18)
    gen = torch.Generator().manual_seed(8)
    y = {"float": torch.randn(18, 3, generator=gen, dtype=torch.float64), "class": labels,
         "binary": torch.randint(0, 2, (18, 3), generator=gen).double()}[kind]
    model = tiny_mlp()
    objective = Objective(model, loss_fn, (x, y), batch_size=10)
    reference = dense_reference(model, lambda f: (10 * loss_fn(f(x[:10]), y[:10]) + 8 * loss_fn(f(x[10:]), y[10:])) / 18)
    assert_products_match(objective, reference)
    workaround = objective.describe()["fwd_rev_workaround"]
    assert (workaround is not None) == (name in ("MSELoss", "F.mse_loss"))
    auto = HessianOperator(Objective(model, loss_fn, (x, y)), cache_graphs=False)  # the cache fixes rev-rev
    auto.matvec(torch.randn(auto.dim, dtype=torch.float64))
    assert auto.describe()["mode_selection"]["probes=1"]["failed"] == {}


def test_bad_structures_fail_with_one_clear_line() -> None:
    x, y = mlp_data(10)
    with pytest.raises(DataError, match="batch 1 is not a tensor"):
        Objective(tiny_mlp(), nn.CrossEntropyLoss(), [(x, y), "text"])
    with pytest.raises(DataError, match="leading"):
        Objective(DictOut(), lambda o, b: F.cross_entropy(o, b["labels"]), [{"x": x, "labels": y[:5]}])
    with pytest.raises(ConfigError, match="exactly one"):
        Objective(tiny_mlp(), nn.CrossEntropyLoss(), (x, y), closure=lambda m, b: m(b[0]).sum())
    with pytest.raises(DataError, match="count_fn"):
        Objective(tiny_mlp(), nn.CrossEntropyLoss(), (x, y), count_fn=lambda b: -1)
