"""Hugging Face models for curvature probes: loading without downloads, and each head's training loss.

Needs the optional extra ``hf`` (``pip install -e ".[hf]"``, which installs ``transformers``).
Models are loaded as users load them (default attention implementation); the objective runs
their products with a kernel that has second derivatives (:mod:`sharpscope.curvature.operators.loaded`).

:func:`head_loss` gives the loss a model's head is trained with, so that an objective on a
Hugging Face model needs no hand-written loss: next-token cross entropy for causal LMs (labels
are ``input_ids`` shifted by one, padding skipped), cross entropy over the labelled positions
for masked LMs (the batch must hold ``labels``), and cross entropy (or squared error, or binary
cross entropy, as ``config.problem_type`` says) for sequence classification. Other heads are
refused with one line: a left-to-right loss is never applied to a model not trained with it.
"""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sharpscope.errors import CheckpointError, ConfigError
from sharpscope.losses import masked_token_cross_entropy, masked_tokens, next_token_cross_entropy, predicted_tokens

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")


def _transformers():  # noqa: ANN202
    try:
        import transformers
    except ImportError:
        raise ConfigError("Hugging Face models need the transformers package: pip install 'sharpscope[hf]'") from None
    return transformers


def hf_model(source: str | Path, *, seed: int = 0) -> nn.Module:
    """A causal language model from a local ``config.json`` (or a folder holding one) or a saved model folder.

    A folder with weights (``save_pretrained``) is loaded with them; a config alone gives a model
    initialised from ``seed``. Nothing is downloaded. The model is returned in eval mode.
    """
    transformers = _transformers()
    path = Path(source).expanduser()
    if not path.exists():
        raise ConfigError(f"{path}: no such Hugging Face config file or model folder")
    folder = path if path.is_dir() else path.parent
    config_file = path if path.is_file() else path / "config.json"
    if not config_file.is_file():
        raise ConfigError(f"{folder}: no config.json for a Hugging Face model")
    auto = transformers.AutoModelForCausalLM
    try:
        if path.is_dir() and any((folder / f).is_file() for f in WEIGHT_FILES):
            with warnings.catch_warnings():  # torch's note on the pickle protocol of a file it then refuses
                warnings.filterwarnings("ignore", message="Detected pickle protocol")
                model = auto.from_pretrained(folder, local_files_only=True)
        else:
            config = transformers.AutoConfig.from_pretrained(config_file, local_files_only=True)
            torch.manual_seed(seed)
            model = auto.from_config(config)
    except pickle.UnpicklingError:  # torch's weights-only loader refused it: loading would run its code
        raise CheckpointError(f"{folder}: its pytorch_model.bin holds a pickle that would run code when loaded (torch's "
                              "weights-only loader refused it); save the model as model.safetensors") from None
    except (OSError, ValueError, KeyError) as err:
        raise ConfigError(f"{path}: cannot build a causal language model: {str(err).splitlines()[0]}") from None
    except Exception as err:
        if type(err).__name__ != "SafetensorError":  # safetensors' own error type, without importing it here
            raise
        raise CheckpointError(f"{folder}: truncated or corrupt model.safetensors ({str(err).splitlines()[0]})") from None
    _check_left_to_right(model, path)
    return model.eval()


def _check_left_to_right(model: nn.Module, path: Path) -> None:
    """Refuse the causal-LM class of an encoder's config (``bert``, ``roberta``, ...) unless the config says
    ``is_decoder``: without it that class attends both ways, and a next-token loss on it is meaningless."""
    from transformers.models.auto import modeling_auto as auto

    config: Any = model.config
    kind = getattr(config, "model_type", None)
    if kind in auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(config, "is_decoder", False):
        raise ConfigError(f"{path}: a {kind!r} config describes a bidirectional encoder; its causal-LM head predicts "
                          "left to right only with is_decoder=true in the config (a masked-LM model needs its own "
                          "loss: Objective(model, None, batch with labels))", argument="model")


@dataclass(frozen=True)
class HeadLoss:
    """The training loss of a Hugging Face head: ``loss_fn(logits, batch)`` (a mean over ``count_fn(batch)``
    examples or tokens), the forward that feeds the model every key of the batch but ``labels``, and the
    batch keys it needs."""

    name: str
    loss_fn: Callable[[Any, Any], Tensor]
    count_fn: Callable[[Any], Tensor | int]
    needs: tuple[str, ...]

    @staticmethod
    def forward(model: nn.Module, batch: object) -> object:
        """``model(**inputs)`` with every key of the mapping but ``labels`` (the loss reads those)."""
        if not isinstance(batch, Mapping):
            raise ConfigError("a Hugging Face head's default loss needs each batch as a mapping (input_ids, "
                              f"attention_mask, ...), got {type(batch).__name__}", argument="data")
        return model(**{k: v for k, v in batch.items() if k != "labels"})


def is_hf_model(model: nn.Module) -> bool:
    """Whether ``model`` is a Hugging Face ``PreTrainedModel`` (without importing transformers)."""
    return any(c.__name__ == "PreTrainedModel" for c in type(model).__mro__)


def _head_kind(model: nn.Module) -> str | None:
    from transformers.models.auto import modeling_auto as auto

    name = type(model).__name__
    kinds = {"causal-lm": auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, "masked-lm": auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES,
             "sequence-classification": auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES}
    for kind, names in kinds.items():
        if name in set(names.values()) or kind == "causal-lm" and name.endswith("ForCausalLM"):
            return kind
    return None


def _rows(batch: Mapping[str, Tensor]) -> int:
    return int(batch["labels"].shape[0])


def _classification_loss(problem: str | None, num_labels: int) -> tuple[str, Callable[..., Tensor]]:
    if problem == "multi_label_classification":
        return ("mean binary cross entropy over labels and examples",
                lambda z, b: F.binary_cross_entropy_with_logits(z, b["labels"].to(z.dtype)))
    if problem == "regression" or problem is None and num_labels == 1:
        return ("mean squared error over examples", lambda z, b: F.mse_loss(z.squeeze(-1), b["labels"].to(z.dtype)))
    if problem == "single_label_classification":
        return "mean cross entropy over examples", lambda z, b: F.cross_entropy(z, b["labels"])

    def by_label_dtype(z: Tensor, b: Mapping[str, Tensor]) -> Tensor:  # Hugging Face's rule without problem_type
        y = b["labels"]
        return F.binary_cross_entropy_with_logits(z, y) if y.is_floating_point() else F.cross_entropy(z, y)

    return "mean cross entropy over examples (binary cross entropy for float labels)", by_label_dtype


def head_loss(model: nn.Module) -> HeadLoss:
    """The loss ``model``'s head is trained with (see the module docstring); :class:`ConfigError` for a
    model that is not a Hugging Face causal-LM, masked-LM or sequence-classification model."""
    kind = _head_kind(model) if is_hf_model(model) else None
    if kind is None:
        what = f"Hugging Face {type(model).__name__}" if is_hf_model(model) else type(model).__name__
        raise ConfigError(f"no default loss for a {what}: the default covers Hugging Face causal-LM, masked-LM and "
                          "sequence-classification heads; give loss_fn or closure", argument="loss_fn")
    if kind == "causal-lm":
        return HeadLoss("causal-lm: mean next-token cross entropy over predicted tokens (labels = input_ids "
                        "shifted by one, padding skipped)", next_token_cross_entropy, predicted_tokens, ("input_ids",))
    if kind == "masked-lm":
        return HeadLoss("masked-lm: mean cross entropy over the labelled positions (labels -100 elsewhere)",
                        masked_token_cross_entropy, masked_tokens, ("input_ids", "labels"))
    config: Any = model.config
    words, fn = _classification_loss(getattr(config, "problem_type", None), int(config.num_labels))
    return HeadLoss(f"sequence-classification: {words}", fn, _rows, ("labels",))
