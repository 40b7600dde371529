"""Models by name: ``build_model("resnet18", norm="gn")`` or ``ModelSpec(...).build()``.

Registered: ``mlp``, ``cnn``, ``resnet18``, ``vgg11``, ``wrn``. All are written for
``torch.func`` (no in-place activations or in-place updates of activations).
"""

from sharpscope.models import cnn as _cnn  # noqa: F401  (registers "cnn")
from sharpscope.models import mlp as _mlp  # noqa: F401
from sharpscope.models import resnet as _resnet  # noqa: F401
from sharpscope.models import vgg as _vgg  # noqa: F401
from sharpscope.models import wrn as _wrn  # noqa: F401
from sharpscope.models._layers import ACTIVATIONS, ChannelLayerNorm, gn_groups
from sharpscope.models.cnn import CNN, cnn
from sharpscope.models.mlp import MLP, mlp
from sharpscope.models.registry import ModelSpec, available_models, build_model, model_kwargs, register_model
from sharpscope.models.resnet import ResNet18, resnet18
from sharpscope.models.vgg import VGG11, vgg11
from sharpscope.models.wrn import WideResNet, wrn

__all__ = [
    "ACTIVATIONS",
    "CNN",
    "ChannelLayerNorm",
    "MLP",
    "ModelSpec",
    "ResNet18",
    "VGG11",
    "WideResNet",
    "available_models",
    "build_model",
    "cnn",
    "gn_groups",
    "mlp",
    "model_kwargs",
    "register_model",
    "resnet18",
    "vgg11",
    "wrn",
]
