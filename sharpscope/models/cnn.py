"""Small CNNs: Cohen et al.'s ``cnn-*`` and Long & Bartlett's conv/ReLU/LayerNorm net."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from sharpscope.errors import ConfigError
from sharpscope.models._layers import NORMS, check_norm, int_list, norm2d
from sharpscope.models._layers import activation as make_activation
from sharpscope.models.registry import register_model
from sharpscope.validation import check_choice, check_int


class CNN(nn.Module):
    """Blocks ``conv3x3 -> act -> norm -> pool2x2``, then a linear head on the flattened features."""

    def __init__(self, in_channels: int, num_classes: int, channels: Sequence[int], activation: str,
                 norm: str | None, pool: str, image_size: int) -> None:
        super().__init__()
        blocks, c_in, size = [], in_channels, image_size
        for c in channels:
            blocks.append(nn.Sequential(
                nn.Conv2d(c_in, c, kernel_size=3, padding=1, bias=True),
                make_activation(activation),
                norm2d(norm, c),
                nn.MaxPool2d(2) if pool == "max" else nn.AvgPool2d(2),
            ))
            c_in, size = c, size // 2
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(c_in * size * size, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, classes)`` of images ``(N, C, H, W)``."""
        return self.head(torch.flatten(self.blocks(x), 1))


@register_model("cnn")
def cnn(in_channels: int, num_classes: int, channels: Sequence[int] = (32, 32), activation: str = "relu",
        norm: str | None = None, pool: str = "max", image_size: int = 32) -> nn.Module:
    """Small CNN for (C, H, W) images with H = W = ``image_size``. Cohen et al. ``cnn-relu``:
    ``cnn(3, 10)``; ``cnn-bn-relu``: ``norm="bn"``; ``cnn-avgpool-*``: ``pool="avg"``. Long &
    Bartlett: ``cnn(3, 10, channels=[16, 32], norm="ln")``. PyTorch default init.
    """
    in_channels = check_int("in_channels", in_channels, low=1)
    num_classes = check_int("num_classes", num_classes, low=1)
    channels = int_list(channels, "channels")
    image_size = check_int("image_size", image_size, low=1)
    check_norm(norm, NORMS)
    check_choice("pool", pool, ("max", "avg"))
    if image_size >> len(channels) < 1:
        raise ConfigError(f"image_size {image_size} is too small for {len(channels)} 2x2 poolings")
    return CNN(in_channels, num_classes, channels, activation, norm, pool, image_size)
