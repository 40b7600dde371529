"""WideResNet (Zagoruyko & Komodakis), pre-activation blocks, with BN, GroupNorm or no norm.

Foret et al. computed their Hessian spectra on a WideResNet without BatchNorm; ``norm=None`` gives that
variant (its convs carry biases). At He init its logits stay well scaled at depth 16 (std ~0.3 for
unit inputs) and grow slowly with depth; for
deep BN-free nets ``residual_gain=0.0`` ends every residual branch in a learnable scalar gain
initialised to that value (SkipInit, De & Smith 2020), so each block starts as the identity.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sharpscope.errors import ConfigError
from sharpscope.models._layers import check_norm, init_conv_relu, norm2d
from sharpscope.models.registry import register_model
from sharpscope.validation import check_int, check_real


class WideBlock(nn.Module):
    """norm -> ReLU -> conv3x3 -> norm -> ReLU -> conv3x3, plus (projected) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int, norm: str | None, residual_gain: float | None) -> None:
        super().__init__()
        bias = norm is None
        self.bn1, self.relu1 = norm2d(norm, c_in), nn.ReLU()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=bias)
        self.bn2, self.relu2 = norm2d(norm, c_out), nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=bias)
        self.shortcut: nn.Module | None = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Conv2d(c_in, c_out, 1, stride=stride, bias=bias)
        self.gain = None if residual_gain is None else nn.Parameter(torch.tensor(float(residual_gain)))

    def forward(self, x: Tensor) -> Tensor:
        """``g·F(x) + x`` (``g`` the residual gain, 1 without one; ``x`` projected after the first norm and ReLU when
        the shape changes): features ``(N, c_out, H/stride, W/stride)`` of ``(N, c_in, H, W)``."""
        o = self.relu1(self.bn1(x))
        y = self.conv2(self.relu2(self.bn2(self.conv1(o))))
        if self.gain is not None:
            y = y * self.gain
        return y + (x if self.shortcut is None else self.shortcut(o))


class WideResNet(nn.Module):
    """WRN-depth-widen: stem conv (16 channels), three groups of (depth-4)/6 blocks, norm, pool, fc."""

    def __init__(self, depth: int, widen: int, num_classes: int, norm: str | None, in_channels: int,
                 residual_gain: float | None) -> None:
        super().__init__()
        n = (depth - 4) // 6
        widths = [16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=norm is None)
        blocks, c_in = [], 16
        for i, w in enumerate(widths):
            group = []
            for j in range(n):
                group.append(WideBlock(c_in, w, (1 if i == 0 else 2) if j == 0 else 1, norm, residual_gain))
                c_in = w
            blocks.append(nn.Sequential(*group))
        self.block1, self.block2, self.block3 = blocks
        self.bn, self.relu = norm2d(norm, c_in), nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)
        init_conv_relu(self)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, classes)`` of images ``(N, C, H, W)``."""
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        return self.fc(torch.flatten(self.avgpool(self.relu(self.bn(x))), 1))


@register_model("wrn")
def wrn(depth: int = 16, widen: int = 4, num_classes: int = 10, norm: str | None = "bn", in_channels: int = 3,
        residual_gain: float | None = None) -> nn.Module:
    """WideResNet-``depth``-``widen`` (depth = 6n + 4), no dropout. ``norm``: "bn", "gn" (32
    channels per group) or None (BN-free). ``residual_gain``: None (plain residual sums) or the
    initial value of a learnable scalar gain on every residual branch (SkipInit; any norm).
    """
    depth = check_int("depth", depth, low=1)
    if depth < 10 or (depth - 4) % 6:
        raise ConfigError(f"WideResNet depth must be 6n+4 with n >= 1 (10, 16, 22, 28, ...), got {depth}")
    check_norm(norm, ("bn", "gn", None))
    residual_gain = check_real("residual_gain", residual_gain, optional=True)
    return WideResNet(depth, check_int("widen", widen, low=1), check_int("num_classes", num_classes, low=1), norm,
                      check_int("in_channels", in_channels, low=1),
                      residual_gain)
