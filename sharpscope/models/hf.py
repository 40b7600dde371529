"""Hugging Face causal language models for curvature probes (byte-level data: :mod:`sharpscope.data.text`).

Needs the optional extra ``hf`` (``pip install -e ".[hf]"``, which installs ``transformers``).
Models are built with eager attention: the fused attention kernels have no double-backward or
forward-mode derivatives on every device, and Hessian-vector products need one of the two.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from sharpscope.errors import ConfigError

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


def hf_checkpoint_model(source: str | Path, checkpoint: str | Path) -> nn.Module:
    """:func:`hf_model` for ``source``, then the weights of ``checkpoint`` unless it is ``source``'s own folder
    or a file in it (loaded already). Keys must match the model's, except weights tied to a loaded one
    (a language-model head sharing the embedding)."""
    from sharpscope.io import read_checkpoint

    model = hf_model(source)
    folder = Path(source).expanduser().resolve()
    folder = folder if folder.is_dir() else folder.parent
    weights = Path(checkpoint).expanduser().resolve()
    if weights == folder or weights.parent == folder and any((folder / f).is_file() for f in WEIGHT_FILES):
        return model
    state = read_checkpoint(weights).state_dict
    result = model.load_state_dict(state, strict=False)
    loaded = {t.data_ptr() for n, t in model.state_dict().items() if n in state}
    missing = [n for n in result.missing_keys if model.state_dict()[n].data_ptr() not in loaded]
    if missing or result.unexpected_keys:
        raise ConfigError(f"{weights} does not fit the model of {source}: missing {missing[:5]}, unexpected "
                          f"{list(result.unexpected_keys)[:5]}")
    return model
