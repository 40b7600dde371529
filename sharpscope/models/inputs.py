"""What input a model takes, in words for error messages (the check that a data set fits a model is
:func:`sharpscope.curvature.fits.check_model_fits`)."""

from __future__ import annotations

from torch import nn

_CONV_SHAPES = {nn.Conv1d: "(N, {c}, L)", nn.Conv2d: "(N, {c}, H, W)", nn.Conv3d: "(N, {c}, D, H, W)"}


def expected_input(model: nn.Module) -> str:
    """Words for the input the model's first layer takes, e.g. ``"(N, 3, H, W) for its first layer
    Conv2d(3 → 16)"``; a generic phrase when the first layer is not a linear, convolution or
    embedding layer."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            return f"(N, {m.in_features}) for its first layer Linear({m.in_features} → {m.out_features})"
        for cls, shape in _CONV_SHAPES.items():
            if isinstance(m, cls):
                return f"{shape.format(c=m.in_channels)} for its first layer {cls.__name__}({m.in_channels} → {m.out_channels})"
        if isinstance(m, nn.Embedding):
            return f"integer ids below {m.num_embeddings} for its first layer Embedding"
    return f"the input of {type(model).__name__}"
