"""VGG-11 for 32x32 images without dropout (Cohen et al.'s ``vgg11`` / ``vgg11-bn``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

import torch
from torch import Tensor, nn

from sharpscope.models._layers import check_norm, int_list, norm2d
from sharpscope.models.registry import register_model
from sharpscope.validation import check_int

# configuration "A": channels in units of the base width 64, "M" = 2x2 max-pool
_CFG_A: tuple[int | str, ...] = (1, "M", 2, "M", 4, 4, "M", 8, 8, "M", 8, 8, "M")


class VGG11(nn.Module):
    """``features`` (conv3x3 [-> norm] -> ReLU, max-pools) then ``classifier`` (Linear/ReLU stack)."""

    def __init__(self, num_classes: int, norm: str | None, width: int, in_channels: int,
                 classifier_widths: Sequence[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for v in _CFG_A:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            c = int(v) * width
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=True), norm2d(norm, c), nn.ReLU()]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)  # identity at 32x32 input (1x1 after five pools)
        head: list[nn.Module] = []
        for w in classifier_widths:
            head += [nn.Linear(c_in, w), nn.ReLU()]
            c_in = w
        head.append(nn.Linear(c_in, num_classes))
        self.classifier = nn.Sequential(*head)
        for m in self.features.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
                nn.init.zeros_(cast(Tensor, m.bias))  # built with bias=True above

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, classes)`` of images ``(N, C, H, W)``."""
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


@register_model("vgg11")
def vgg11(num_classes: int = 10, norm: str | None = None, width: int = 64, in_channels: int = 3,
          classifier_widths: Sequence[int] = (512, 512)) -> nn.Module:
    """VGG-11 (configuration A) as in Cohen et al.: convs with biases, BatchNorm before ReLU when
    ``norm="bn"`` (``"gn"`` also accepted), no dropout, classifier 512 -> 512 -> 512 -> classes
    (``classifier_widths=[]`` for a single linear layer); conv weights N(0, 2/(9*out_channels)).
    ``width`` is the first stage's channel count (64 in the paper).
    """
    check_norm(norm, (None, "bn", "gn"))
    return VGG11(check_int("num_classes", num_classes, low=1), norm, check_int("width", width, low=1),
                 check_int("in_channels", in_channels, low=1),
                 int_list(classifier_widths, "classifier_widths", allow_empty=True))
