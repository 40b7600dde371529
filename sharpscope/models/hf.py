"""Hugging Face causal language models for curvature probes, and byte-level tokens without a tokenizer.

Needs the optional extra ``hf`` (``pip install -e ".[hf]"``, which installs ``transformers``).
Models are built with eager attention: the fused attention kernels have no double-backward or
forward-mode derivatives on every device, and Hessian-vector products need one of the two.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from sharpscope.errors import ConfigError, DataError

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
            model = auto.from_pretrained(folder, local_files_only=True, attn_implementation="eager")
        else:
            config = transformers.AutoConfig.from_pretrained(config_file, local_files_only=True)
            torch.manual_seed(seed)
            model = auto.from_config(config, attn_implementation="eager")
    except (OSError, ValueError, KeyError) as err:
        raise ConfigError(f"{path}: cannot build a causal language model: {str(err).splitlines()[0]}") from None
    return model.eval()


def byte_tokens(text: bytes | str, seq_len: int) -> tuple[Tensor, Tensor]:
    """Next-byte prediction pairs from text: ids ``x`` of shape ``(B, seq_len)`` and targets ``y = x`` shifted by one.

    Bytes are the vocabulary (ids 0..255), so no tokenizer is needed; the text is cut into
    ``B = (len − 1) // seq_len`` consecutive windows, the tail dropped.
    """
    if seq_len < 1:
        raise ConfigError(f"seq_len must be positive, got {seq_len}")
    data = text.encode() if isinstance(text, str) else bytes(text)
    windows = (len(data) - 1) // seq_len
    if windows < 1:
        raise DataError(f"the text holds {len(data)} bytes; one window of {seq_len} tokens needs {seq_len + 1}")
    ids = torch.frombuffer(bytearray(data[: windows * seq_len + 1]), dtype=torch.uint8).long()
    return ids[:-1].view(windows, seq_len), ids[1:].view(windows, seq_len)
