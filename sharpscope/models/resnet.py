"""ResNet-18 for 32x32 images (3x3 stem, no max-pool), BatchNorm or GroupNorm.

Parameter names follow the common torchvision layout (``conv1``, ``bn1``, ``layer1.0.conv1``,
``layer2.0.downsample.0``, ``fc``), so state dicts of torchvision-based CIFAR ResNet-18s such as
Damian et al.'s (GroupNorm with 32 channels per group) load directly; ``bn*`` hold whatever
normalisation was chosen.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sharpscope.models._layers import check_norm, init_conv_relu, norm2d
from sharpscope.models.registry import register_model
from sharpscope.validation import check_int


class BasicBlock(nn.Module):
    """Two 3x3 convs with normalisation; projection shortcut when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int, norm: str | None) -> None:
        super().__init__()
        bias = norm is None
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=bias)
        self.bn1 = norm2d(norm, c_out)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=bias)
        self.bn2 = norm2d(norm, c_out)
        self.relu2 = nn.ReLU()
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=bias), norm2d(norm, c_out))

    def forward(self, x: Tensor) -> Tensor:
        """``relu(F(x) + shortcut(x))``: features ``(N, c_out, H/stride, W/stride)`` of ``(N, c_in, H, W)``."""
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.downsample(x))


class ResNet18(nn.Module):
    """CIFAR ResNet-18: stem, four stages of two basic blocks (widths w, 2w, 4w, 8w), pool, fc."""

    def __init__(self, num_classes: int, norm: str | None, width: int, in_channels: int) -> None:
        super().__init__()
        widths = [width, 2 * width, 4 * width, 8 * width]
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=norm is None)
        self.bn1 = norm2d(norm, width)
        self.relu = nn.ReLU()
        stages, c_in = [], width
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(BasicBlock(c_in, w, stride, norm), BasicBlock(w, w, 1, norm)))
            c_in = w
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)
        init_conv_relu(self)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, classes)`` of images ``(N, C, H, W)``."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@register_model("resnet18")
def resnet18(num_classes: int = 10, norm: str | None = "bn", width: int = 64, in_channels: int = 3) -> nn.Module:
    """CIFAR ResNet-18 (11.2M parameters at ``width=64``). ``norm``: "bn", "gn" (GroupNorm, 32
    channels per group, Damian et al.'s default; at least one group), or None (convs get biases).
    ``width`` scales every stage (e.g. 8 or 16 for fast tests). He-normal (fan_out) conv init.
    """
    check_norm(norm, ("bn", "gn", None))
    return ResNet18(check_int("num_classes", num_classes, low=1), norm, check_int("width", width, low=1),
                    check_int("in_channels", in_channels, low=1))
