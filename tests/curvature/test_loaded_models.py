"""Products on transformers as users load them: fused attention, activation checkpointing, bf16 weights.

Tiny Hugging Face models are built from their configs (nothing is downloaded); each product is
compared with the product of the same function computed the plain way (eager attention, no
checkpointing, float32 weights), in float64 where the comparison is exact.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from sharpscope import HessianOperator, Objective
from sharpscope.curvature import CurvatureSettings
from sharpscope.curvature.operators.hvp import hvp_fwd_rev, hvp_rev_rev
from sharpscope.curvature.operators.precision import relative_deviation
from sharpscope.errors import ConfigError, ObjectiveError
from sharpscope.probe import ProbeSettings

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("single_thread")


def gpt2(attention: str = "sdpa", dtype: torch.dtype = torch.float64) -> nn.Module:
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=32,
                                     bos_token_id=0, eos_token_id=0)
    config._attn_implementation = attention
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config).to(dtype).eval()


def tokens(rows: int = 4, length: int = 8) -> dict[str, Tensor]:
    ids = torch.randint(0, 64, (rows, length), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, length - 3:] = 0  # right padding
    return {"input_ids": ids, "attention_mask": mask}


def probe_vector(dim: int, dtype: torch.dtype = torch.float64) -> Tensor:
    return torch.randn(dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype)


def product(model: nn.Module, mode: str, batch: dict[str, Tensor] | None = None) -> tuple[Tensor, dict[str, object]]:
    op = HessianOperator(Objective(model, None, batch or tokens(), batch_size=2), mode=mode)  # type: ignore[arg-type]
    return op.matvec(probe_vector(op.dim)), op.describe()


# ------------------------------------------------------------------------------------------ attention
def test_fused_sdpa_kernels_have_no_double_backward_or_forward_mode_on_cpu() -> None:
    """What the fallback is for: the default (fused) SDPA kernel fails both exact product modes."""
    objective = Objective(gpt2("sdpa"), None, tokens())
    objective.loaded.math_attention = False  # the kernel the model picks on its own
    rows = probe_vector(objective.dim)[None]
    for fn, error in ((hvp_rev_rev, RuntimeError), (hvp_fwd_rev, NotImplementedError)):
        with objective.mode(), pytest.raises(error, match="scaled_dot_product|flash_attention"):
            fn(objective, objective.param_values(), objective.batches[0], rows)  # type: ignore[index]


@pytest.mark.parametrize("mode", ["fwd-rev", "rev-rev"])
def test_sdpa_and_eager_attention_give_the_same_product(mode: str) -> None:
    eager, _ = product(gpt2("eager"), mode)
    sdpa, record = product(gpt2("sdpa"), mode)
    torch.testing.assert_close(sdpa, eager, rtol=1e-12, atol=1e-12)
    attention = record["attention"]
    assert attention["kernel"] == "math SDPA backend" and "predicted" not in attention["reason"]  # type: ignore[index]
    assert "attn_implementation='sdpa'" in attention["reason"]  # type: ignore[index]


class SelfAttention(nn.Module):
    """One causal self-attention layer and a linear read-out, by SDPA or written out."""

    def __init__(self, fused: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.qkv, self.out, self.fused = nn.Linear(8, 24), nn.Linear(8, 3), fused

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.qkv(x).view(x.shape[0], x.shape[1], 3, 2, 4).permute(2, 0, 3, 1, 4)
        if self.fused:
            h = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            scores = q @ k.transpose(-1, -2) / 2.0
            causal = torch.ones(x.shape[1], x.shape[1], dtype=torch.bool).tril()
            h = scores.masked_fill(~causal, float("-inf")).softmax(-1) @ v
        return self.out(h.transpose(1, 2).reshape(x.shape[0], x.shape[1], 8)).mean(1)


def test_a_plain_module_calling_sdpa_switches_to_the_math_kernel_at_its_first_failing_product() -> None:
    x = torch.randn(6, 5, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    written = Objective(SelfAttention(fused=False).double(), F.cross_entropy, (x, y))
    fused = Objective(SelfAttention(fused=True).double(), F.cross_entropy, (x, y))
    assert fused.loaded.math_attention is False  # nothing to predict it from
    v = probe_vector(written.dim)
    reference = HessianOperator(written, mode="rev-rev").matvec(v)
    op = HessianOperator(fused)  # auto: both timed modes fail on the fused kernel first
    torch.testing.assert_close(op.matvec(v), reference, rtol=1e-12, atol=1e-12)
    attention = op.describe()["attention"]
    assert attention["kernel"] == "math SDPA backend"  # type: ignore[index]
    assert attention["reason"].startswith("detected at the first product")  # type: ignore[index]


# -------------------------------------------------------------------------------------- checkpointing
def counting(model: nn.Module, reentrant: bool) -> list[int]:
    """Enable Hugging Face checkpointing with a checkpoint function that counts its calls."""
    calls = [0]

    def counted(*args: object, **kwargs: object) -> object:
        calls[0] += 1
        return checkpoint(*args, **kwargs)  # type: ignore[arg-type]

    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    for layer in model.transformer.h:  # type: ignore[union-attr]
        layer._gradient_checkpointing_func = functools.partial(counted, use_reentrant=reentrant)
    return calls


@pytest.mark.filterwarnings("ignore::FutureWarning")  # gradient_checkpointing_enable's new name
@pytest.mark.parametrize("reentrant", [False, True])
def test_checkpointed_products_equal_plain_products(reentrant: bool) -> None:
    plain = gpt2("sdpa")
    checkpointed = copy.deepcopy(plain)
    calls = counting(checkpointed, reentrant)
    expected, _ = product(plain, "rev-rev")
    got, record = product(checkpointed, "auto")
    assert calls[0] > 0  # the layers stayed checkpointed during the products
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert record["hvp_mode"] == "rev-rev" and "checkpointed" in record["mode_selection"]["mode"]["reason"]  # type: ignore[index]
    assert record["checkpointing"]["layers"] == 2  # type: ignore[index]
    assert record["checkpointing"]["reentrant_layers"] == (2 if reentrant else 0)  # type: ignore[index]
    # finite differences take gradients at θ ± εv: the recomputed layers must see those parameters too
    torch.testing.assert_close(product(checkpointed, "fd")[0], product(plain, "fd")[0], rtol=1e-10, atol=1e-10)
    with pytest.raises(ConfigError, match="cannot run through activation-checkpointed layers") as err:
        HessianOperator(Objective(checkpointed, None, tokens()), mode="fwd-rev")
    assert err.value.argument == "mode"


class Checkpointed(nn.Module):
    """Two tanh layers, the first under ``torch.utils.checkpoint`` (non-reentrant)."""

    def __init__(self, use_checkpoint: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.use_checkpoint = nn.Linear(4, 6), nn.Linear(6, 3), use_checkpoint

    def forward(self, x: Tensor) -> Tensor:
        first = lambda t: torch.tanh(self.a(t))  # noqa: E731
        h = checkpoint(first, x, use_reentrant=False) if self.use_checkpoint else first(x)
        return self.b(h)


@pytest.mark.parametrize("mode", ["rev-rev", "fd"])
def test_torch_checkpoint_in_a_plain_module_gives_exact_products(mode: str) -> None:
    x = torch.randn(10, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = torch.arange(10) % 3
    plain = HessianOperator(Objective(Checkpointed(False).double(), F.cross_entropy, (x, y)), mode=mode)
    ckpt = HessianOperator(Objective(Checkpointed(True).double(), F.cross_entropy, (x, y)), mode=mode)
    v = probe_vector(plain.dim)
    torch.testing.assert_close(ckpt.matvec(v), plain.matvec(v), rtol=1e-10, atol=1e-12)


def test_a_mode_the_model_cannot_run_fails_in_one_line_naming_it() -> None:
    class Reentrant(Checkpointed):
        def forward(self, x: Tensor) -> Tensor:
            return self.b(checkpoint(lambda t: torch.tanh(self.a(t)), x, use_reentrant=True))

    x = torch.randn(10, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    objective = Objective(Reentrant(True).double(), F.cross_entropy, (x, torch.arange(10) % 3))
    with pytest.raises(ObjectiveError, match=r"^fwd-rev Hessian-vector products fail on this model \(RuntimeError: "
                                             r".*\); try 'auto'$"):
        HessianOperator(objective, mode="fwd-rev").matvec(probe_vector(objective.dim))


# --------------------------------------------------------------------------------------- bf16 weights
def independent_fd(model: nn.Module, batch: dict[str, Tensor], v: Tensor, h: float) -> Tensor:
    """Central differences of two bf16 gradients, by writing θ ± εv into a copy of the model."""
    model = copy.deepcopy(model)
    params = list(model.parameters())
    theta = torch.cat([p.detach().reshape(-1).float() for p in params])
    eps = h * (1 + float(theta.norm())) / float(v.float().norm())

    def gradient(point: Tensor) -> Tensor:
        with torch.no_grad():
            torch.nn.utils.vector_to_parameters(point.to(torch.bfloat16), params)
        model.zero_grad()
        logits = model(**batch, use_cache=False).logits
        F.cross_entropy(logits[:, :-1].flatten(0, 1), batch["input_ids"][:, 1:].flatten()).backward()
        return torch.cat([p.grad.reshape(-1) for p in params]).float()  # type: ignore[union-attr]

    return (gradient(theta + eps * v.float()) - gradient(theta - eps * v.float())) / (2 * eps)


def exact_float32(model: nn.Module, batch: dict[str, Tensor], v: Tensor) -> Tensor:
    """``H v`` of a float32 copy with eager attention by double backward, written out."""
    model = copy.deepcopy(model).float()
    model.config._attn_implementation = "eager"
    params = list(model.parameters())
    logits = model(**batch, use_cache=False).logits
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), batch["input_ids"][:, 1:].flatten())
    grads = torch.autograd.grad(loss, params, create_graph=True)
    flat = torch.cat([g.reshape(-1) for g in grads])
    hv = torch.autograd.grad(flat @ v.float(), params)
    return torch.cat([t.reshape(-1) for t in hv])


def test_native_bf16_products_record_their_error_against_a_float32_copy() -> None:
    model = gpt2("eager", torch.bfloat16)
    batch = {"input_ids": tokens(2, 8)["input_ids"]}
    op = HessianOperator(Objective(model, None, batch, weight_precision="native"))
    assert op.dtype == torch.float32  # the algorithms' vectors; the weights and their gradients stay bf16
    assert op.matvec(torch.randn(op.dim, generator=torch.Generator().manual_seed(5))).dtype == torch.float32
    record = op.precision_record()
    assert op.mode == "fd" and record["weights"] == "bfloat16" and record["mode"] == "fd"
    step = record["fd_step"]
    base = float(torch.finfo(torch.bfloat16).eps) ** (1 / 3)  # steps from bf16's precision, not float32's
    assert list(record["fd_step_trials"]) == [f"{f * base:.4g}" for f in (4, 2, 1, 0.5, 0.25, 0.125, 0.0625)]  # type: ignore[call-overload]
    assert record["fd_step_trials"][f"{step:.4g}"] == min(record["fd_step_trials"].values())  # type: ignore[index, union-attr]
    # the recorded deviation, recomputed: the seed-0 vector, an independent FD product and a float32 reference
    seed0 = torch.randn(op.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64).float()
    reference = exact_float32(model, batch, seed0)
    fd = independent_fd(model, batch, seed0, step)  # type: ignore[arg-type]
    expected = relative_deviation(fd, reference)
    assert 1e-3 < expected < 0.5  # a real, finite error of bf16 arithmetic
    assert record["deviation"] == pytest.approx(expected, rel=2e-2)


def test_upcast_bf16_weights_give_exact_float32_products() -> None:
    model = gpt2("sdpa", torch.bfloat16)
    batch = {"input_ids": tokens(2, 8)["input_ids"]}
    op = HessianOperator(Objective(model, None, batch), mode="rev-rev")
    v = probe_vector(op.dim, torch.float32)
    torch.testing.assert_close(op.matvec(v), exact_float32(model, batch, v), rtol=1e-4, atol=1e-5)
    assert op.precision_record()["deviation"] is None  # exact products need no measurement


def test_weight_precision_is_a_checked_curvature_setting_that_reaches_the_operator() -> None:
    with pytest.raises(ConfigError, match="^weight_precision must be 'upcast' or 'native', got 'half'$") as err:
        CurvatureSettings(weight_precision="half")  # type: ignore[arg-type]
    assert err.value.argument == "weight_precision"
    model = gpt2("sdpa", torch.bfloat16)
    batch = {"input_ids": tokens(2, 8)["input_ids"]}
    native = CurvatureSettings(weight_precision="native", hvp_mode="rev-rev")
    op = native.hessian(Objective(model, None, batch, weight_precision=native.weight_precision))
    op.matvec(probe_vector(op.dim, torch.float32))
    record = op.precision_record()  # exact modes in bf16 arithmetic are measured too
    assert record["mode"] == "rev-rev" and 0 < record["deviation"] < 0.1 and "fd_step" not in record  # type: ignore[operator]
    with pytest.raises(ConfigError, match="weight_precision='native' applies to the Hessian only") as err:
        ProbeSettings(operator="ggn", curvature=native.replace(hvp_mode="auto"))  # GGN products would go unmeasured
    assert err.value.argument == "operator"


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_checkpointed_layers_that_sample_dropout_themselves_run_without_checkpointing() -> None:
    config = transformers.BartConfig(vocab_size=64, d_model=16, decoder_layers=2, decoder_attention_heads=2,
                                     decoder_ffn_dim=32, max_position_embeddings=32, dropout=0.3,
                                     activation_dropout=0.3, attention_dropout=0.0)
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    plain = transformers.BartForCausalLM(config).double().eval()
    checkpointed = copy.deepcopy(plain)
    checkpointed.gradient_checkpointing_enable()  # BART's decoder layers call F.dropout(training=self.training)
    batch = tokens(2, 6)
    objective = Objective(checkpointed, None, batch)
    record = objective.describe()["checkpointing"]
    assert record["layers"] == 0 and "sample dropout themselves" in record["reason"]  # type: ignore[index]
    v = probe_vector(objective.dim)
    expected = HessianOperator(Objective(plain, None, batch), mode="rev-rev").matvec(v)
    torch.testing.assert_close(HessianOperator(objective).matvec(v), expected, rtol=1e-12, atol=1e-12)
