"""A Hugging Face model loaded from its folder (or config) with the weights of a sharpscope checkpoint."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from sharpscope.errors import ConfigError
from sharpscope.io.checkpoints import read_checkpoint
from sharpscope.models.hf import WEIGHT_FILES, hf_model


def hf_checkpoint_model(source: str | Path, checkpoint: str | Path) -> nn.Module:
    """:func:`~sharpscope.models.hf.hf_model` for ``source``, then the weights of ``checkpoint`` unless it is ``source``'s own folder
    or a file in it (loaded already). Keys must match the model's, except weights tied to a loaded one
    (a language-model head sharing the embedding)."""
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
