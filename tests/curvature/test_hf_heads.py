"""Hugging Face models in the library with a dict batch and no hand-written loss: each head's own loss.

Tiny models from ``transformers`` configs (no downloads). The default loss of each head is checked
against the loss the model computes itself from ``labels`` (an independent implementation), and
the causal-LM objective against the byte-window pairs the CLI's ``text:`` data gives.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from sharpscope import HessianOperator, Objective
from sharpscope.errors import ConfigError, DataError
from sharpscope.losses import IGNORE_INDEX, token_cross_entropy

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("single_thread")


def ids_and_mask() -> dict[str, Tensor]:
    ids = torch.randint(1, 64, (4, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0
    mask[2, 4:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def gpt2() -> nn.Module:
    config = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64, n_positions=16,
                                     bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config).double().eval()


def bert_config(**extra: object) -> object:
    return transformers.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=32, max_position_embeddings=16, **extra)


def own_loss(model: nn.Module, batch: dict[str, Tensor], labels: Tensor) -> float:
    """The loss the Hugging Face model computes itself (eager attention, float64)."""
    model.config._attn_implementation = "eager"
    with torch.no_grad():
        return float(model(**batch, labels=labels).loss)


def test_a_causal_lm_takes_the_shifted_token_loss_over_every_predicted_token() -> None:
    model, batch = gpt2(), ids_and_mask()
    objective = Objective(model, None, batch, batch_size=3)  # batches of 3 and 1 rows: a mean over tokens
    info = objective.describe()
    assert str(info["head_loss"]).startswith("causal-lm") and info["loss_closure"] is False
    predicted = int(batch["attention_mask"][:, 1:].sum())
    assert info["probe_examples"] == predicted and info["reduction_check"] == "mean"
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORE_INDEX)
    # Hugging Face's own loss casts logits to float32: agreement to float32 rounding
    assert objective.loss() == pytest.approx(own_loss(model, batch, labels), rel=1e-6)


def test_the_causal_lm_objective_equals_the_byte_window_pairs_of_the_cli() -> None:
    model = gpt2()
    windows = torch.randint(0, 64, (5, 9), generator=torch.Generator().manual_seed(2))
    head = Objective(model, None, {"input_ids": windows})
    pairs = Objective(model, token_cross_entropy, (windows[:, :-1], windows[:, 1:]))
    assert head.loss() == pytest.approx(pairs.loss(), rel=1e-12)
    v = torch.randn(head.dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(HessianOperator(head, mode="rev-rev").matvec(v),
                               HessianOperator(pairs, mode="rev-rev").matvec(v), rtol=1e-10, atol=1e-12)


def test_a_masked_lm_takes_its_labelled_positions_and_refuses_a_batch_without_labels() -> None:
    torch.manual_seed(0)
    model = transformers.BertForMaskedLM(bert_config()).double().eval()
    batch = ids_and_mask()
    with pytest.raises(DataError, match="batch 0 has no labels: the masked-lm loss needs"):
        Objective(model, None, batch)
    labels = torch.full_like(batch["input_ids"], IGNORE_INDEX)
    labels[:, 2] = batch["input_ids"][:, 2]  # two masked positions per row
    labels[:, 5] = batch["input_ids"][:, 5]
    objective = Objective(model, None, {**batch, "labels": labels}, batch_size=2)
    assert objective.describe()["probe_examples"] == 8
    assert objective.loss() == pytest.approx(own_loss(model, batch, labels), rel=1e-10)


@pytest.mark.parametrize("num_labels", [3, 1])
def test_a_sequence_classifier_takes_its_own_loss(num_labels: int) -> None:
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(bert_config(num_labels=num_labels)).double().eval()
    batch = ids_and_mask()
    labels = torch.tensor([0, 2, 1, 2]) if num_labels == 3 else torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=torch.float64)
    objective = Objective(model, None, {**batch, "labels": labels}, batch_size=2)
    assert objective.describe()["probe_examples"] == 4
    assert objective.loss() == pytest.approx(own_loss(model, batch, labels), rel=1e-10)


def test_heads_without_a_known_loss_are_refused_in_one_line() -> None:
    torch.manual_seed(0)
    for model in (transformers.BertModel(bert_config()), nn.Linear(3, 2)):
        with pytest.raises(ConfigError, match="no default loss for a .*give loss_fn or closure") as err:
            Objective(model, None, ids_and_mask())
        assert err.value.argument == "loss_fn" and "\n" not in str(err.value)


def test_loading_an_encoder_config_as_a_causal_lm_is_refused(tmp_path: Path) -> None:
    from sharpscope.models.hf import hf_model

    config = {"model_type": "bert", "vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 1,
              "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 16}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="'bert' config describes a bidirectional encoder") as err:
        hf_model(tmp_path / "config.json")
    assert err.value.argument == "model"
    (tmp_path / "config.json").write_text(json.dumps({**config, "is_decoder": True}))
    assert type(hf_model(tmp_path / "config.json")).__name__ == "BertLMHeadModel"
