"""A tiny Hugging Face GPT-2 built from its config, on byte-level tokens of real text, against dense float64 blocks.

Skips without the ``hf`` extra (transformers). No weights or tokenizers are downloaded.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call

from sharpscope import HessianOperator, Objective, exact_hessian, hutchpp, lanczos
from sharpscope.data.text import byte_tokens
from sharpscope.models.hf import hf_model

transformers = pytest.importorskip("transformers")

BLOCK = "transformer.h.0.attn.*"


def tiny_gpt2() -> torch.nn.Module:
    config = transformers.GPT2Config(vocab_size=256, n_positions=16, n_embd=4, n_layer=1, n_head=2,
                                     bos_token_id=0, eos_token_id=0)
    config._attn_implementation = "eager"  # fused attention has no double backward on CPU
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config).double().eval()


def text_batch() -> dict[str, Tensor]:
    """Six windows of 16 bytes of a standard-library source file; two are padded on the right."""
    ids = torch.tensor(list(Path(textwrap.__file__).read_bytes()[:96])).view(6, 16)
    mask = torch.ones_like(ids)
    mask[1, 10:] = 0
    mask[4, 5:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def next_token_mean(logits: Tensor, batch: dict[str, Tensor]) -> Tensor:
    """Mean next-token cross entropy over the predicted tokens that are not padding."""
    per_token = F.cross_entropy(logits[:, :-1].flatten(0, 1), batch["input_ids"][:, 1:].flatten(), reduction="none")
    keep = batch["attention_mask"][:, 1:].flatten().to(per_token.dtype)
    return (per_token * keep).sum() / keep.sum()


def predicted_tokens(batch: dict[str, Tensor]) -> Tensor:
    return batch["attention_mask"][:, 1:].sum()


def dense_block(model: torch.nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """The Hessian of the mean over every predicted token of the whole set, over the first attention block."""
    names = [n for n, _ in model.named_parameters() if n.startswith("transformer.h.0.attn.")]
    values = dict(model.named_parameters())
    shapes = [values[n].shape for n in names]
    theta = torch.cat([values[n].detach().reshape(-1) for n in names])

    def loss(flat: Tensor) -> Tensor:
        parts = torch.split(flat, [s.numel() for s in shapes])
        params = {n: t.reshape(s) for n, t, s in zip(names, parts, shapes)}
        return next_token_mean(functional_call(model, params, (), dict(batch)).logits, batch)

    return torch.autograd.functional.hessian(loss, theta)


def test_tiny_gpt2_block_top_eigenvalue_and_trace_match_the_dense_block() -> None:
    model, batch = tiny_gpt2(), text_batch()
    objective = Objective(model, next_token_mean, batch, params=BLOCK, count_fn=predicted_tokens, batch_size=2)
    info = objective.describe()
    assert info["num_batches"] == 3 and info["probe_examples"] == int(predicted_tokens(batch))
    assert info["reduction_check"] == "mean" and objective.dim == 80
    dense = dense_block(model, batch)
    torch.testing.assert_close(exact_hessian(objective), dense, rtol=1e-10, atol=1e-12)
    for mode in ("fwd-rev", "rev-rev"):
        op = HessianOperator(objective, mode=mode)
        top = lanczos(op, k=1, tol=1e-10, seed=0)
        torch.testing.assert_close(top.eigenvalues[0], torch.linalg.eigvalsh(dense)[-1], rtol=1e-10, atol=0)
        # a budget of 3·dim + 2 makes the Hutch++ sketch span the whole block: the trace is exact
        trace = hutchpp(op, 3 * objective.dim + 2, seed=0)
        assert trace.estimate == pytest.approx(float(dense.trace()), rel=1e-10)


def test_saved_model_folder_and_config_load_without_downloads(tmp_path: Path) -> None:
    model = tiny_gpt2()
    model.save_pretrained(tmp_path / "saved")
    loaded = hf_model(tmp_path / "saved")
    for (name, p), q in zip(model.named_parameters(), loaded.parameters()):
        torch.testing.assert_close(q.double(), p, rtol=0, atol=0, msg=name)
    config = {"model_type": "gpt2", "vocab_size": 256, "n_positions": 8, "n_embd": 4, "n_layer": 1, "n_head": 2}
    (tmp_path / "config.json").write_text(json.dumps(config))
    fresh = hf_model(tmp_path / "config.json")
    x, y = byte_tokens(Path(textwrap.__file__).read_bytes()[:200], seq_len=8)
    objective = Objective(fresh, lambda logits, t: F.cross_entropy(logits.flatten(0, 1), t.flatten()), (x, y),
                          params="transformer.h.0.attn.c_proj.*")
    assert objective.dtype == torch.float32 and objective.describe()["reduction_check"] == "mean"
