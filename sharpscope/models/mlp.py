"""Fully connected networks (Cohen et al.'s ``fc-*``; Long & Bartlett's MNIST MLP)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from sharpscope.errors import DataError
from sharpscope.models._layers import activation as make_activation
from sharpscope.models._layers import int_list
from sharpscope.models.registry import register_model
from sharpscope.validation import check_bool, check_choice, check_int


class MLP(nn.Module):
    """``flatten -> [Linear -> act] * len(widths) -> Linear``; parameters ``hidden.i.*`` and ``out.*``."""

    def __init__(self, in_features: int, num_classes: int, widths: Sequence[int], activation: str, bias: bool,
                 flatten: bool) -> None:
        super().__init__()
        self.in_features, self.flatten = in_features, flatten
        dims = [in_features, *widths]
        self.hidden = nn.ModuleList(nn.Linear(a, b, bias=bias) for a, b in zip(dims[:-1], dims[1:]))
        self.act = make_activation(activation)
        self.out = nn.Linear(dims[-1], num_classes, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, classes)`` of inputs ``(N, in_features)`` (or ``(N, ...)`` flattened to it when ``flatten``)."""
        if self.flatten:
            x = torch.flatten(x, 1)
        if x.shape[-1] != self.in_features:
            raise DataError(f"MLP expects {self.in_features} input features, got input of shape {tuple(x.shape)}")
        for layer in self.hidden:
            x = self.act(layer(x))
        return self.out(x)


@register_model("mlp")
def mlp(in_features: int, num_classes: int, widths: Sequence[int] = (200, 200), activation: str = "tanh",
        bias: bool = True, flatten: bool = True, init: str = "torch") -> nn.Module:
    """Fully connected net. Cohen et al. ``fc-tanh`` on CIFAR: ``mlp(3072, 10)`` (2 hidden layers
    of 200, tanh, biases, PyTorch default init). Long & Bartlett on MNIST:
    ``mlp(784, 10, widths=[1000]*4, activation="relu", init="glorot_normal")`` (depth 4, width 1000
    — read as 4 hidden layers). ``init``: "torch" (PyTorch default) or "glorot_normal"
    (Xavier-normal weights, zero biases). ``widths=[]`` gives a linear model.
    """
    in_features = check_int("in_features", in_features, low=1)
    num_classes = check_int("num_classes", num_classes, low=1)
    widths = int_list(widths, "widths", allow_empty=True)
    check_choice("init", init, ("torch", "glorot_normal"))
    check_bool("bias", bias)
    check_bool("flatten", flatten)
    model = MLP(in_features, num_classes, widths, activation, bias, flatten)
    if init == "glorot_normal":
        for m in model.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
    return model
