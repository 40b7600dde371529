"""Building blocks shared by the models: activations, normalisation layers, argument checks."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from sharpscope.errors import ConfigError
from sharpscope.validation import check_int

ACTIVATIONS = ("tanh", "relu", "elu", "softplus", "hardtanh", "gelu", "identity")
NORMS = (None, "bn", "gn", "ln")
GN_CHANNELS_PER_GROUP = 32


def activation(name: str) -> nn.Module:
    """A fresh (never in-place) activation module."""
    table = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "softplus": nn.Softplus, "hardtanh": nn.Hardtanh,
             "gelu": nn.GELU, "identity": nn.Identity}
    if name not in table:
        raise ConfigError(f"unknown activation {name!r}; valid: {', '.join(ACTIVATIONS)}")
    return table[name]()


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels at each spatial position of an (N, C, H, W) tensor (Flax's
    default ``LayerNorm`` on NHWC, as in Long & Bartlett's CNN), with a per-channel affine map."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(channels, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.ln(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def gn_groups(channels: int, per_group: int = GN_CHANNELS_PER_GROUP) -> int:
    """Number of GroupNorm groups for ``per_group`` channels per group (Damian et al.:
    ``channels // 32``), at least 1 and always dividing ``channels``."""
    g = max(1, channels // per_group)
    while channels % g:
        g -= 1
    return g


def norm2d(kind: str | None, channels: int) -> nn.Module:
    """Normalisation after a conv: None, "bn" (BatchNorm2d), "gn" (GroupNorm, 32 channels per
    group), "ln" (:class:`ChannelLayerNorm`)."""
    check_norm(kind, NORMS)
    if kind is None:
        return nn.Identity()
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "gn":
        return nn.GroupNorm(gn_groups(channels), channels)
    return ChannelLayerNorm(channels)


def check_norm(kind: str | None, allowed: Sequence[str | None]) -> None:
    if kind not in allowed:
        raise ConfigError(f"unknown norm {kind!r}; valid: {', '.join(repr(a) for a in allowed)}")


def int_list(values: object, what: str, *, allow_empty: bool = False) -> list[int]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ConfigError(f"{what} must be a list of positive integers, got {values!r}")
    out = [check_int(f"each entry of {what}", v, low=1) for v in values]
    if not out and not allow_empty:
        raise ConfigError(f"{what} must not be empty")
    return out


def init_conv_relu(module: nn.Module) -> None:
    """He-normal (fan_out) conv weights, zero conv biases, unit/zero norm affine parameters."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)) and m.weight is not None:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

