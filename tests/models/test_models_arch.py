import pytest
import torch
from torch import nn

from sharpscope.errors import DataError
from sharpscope.models import ChannelLayerNorm, build_model, gn_groups


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_cohen_fc_tanh() -> None:
    m = build_model("mlp", in_features=3072, num_classes=10)
    assert n_params(m) == 3072 * 200 + 200 + 200 * 200 + 200 + 200 * 10 + 10
    assert isinstance(m.act, nn.Tanh) and len(m.hidden) == 2
    assert m(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(DataError, match="expects 3072 input features"):
        m(torch.zeros(2, 100))


def test_long_bartlett_mlp_init() -> None:
    torch.manual_seed(0)
    m = build_model("mlp", in_features=784, num_classes=10, widths=[1000] * 4, activation="relu",
                    init="glorot_normal")
    assert len(m.hidden) == 4 and all(float(layer.bias.detach().abs().max()) == 0 for layer in m.hidden)
    w = m.hidden[1].weight
    assert abs(float(w.std()) - (2 / 2000) ** 0.5) < 1e-3  # Xavier normal: std = sqrt(2/(fan_in+fan_out))


def test_linear_mlp_without_flatten() -> None:
    m = build_model("mlp", in_features=40, num_classes=10, widths=[], flatten=False)
    assert m(torch.zeros(5, 40)).shape == (5, 10) and len(m.hidden) == 0


def test_cohen_cnn_and_variants() -> None:
    m = build_model("cnn", in_channels=3, num_classes=10)
    assert n_params(m) == (3 * 32 * 9 + 32) + (32 * 32 * 9 + 32) + (32 * 8 * 8 * 10 + 10)
    assert m(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    bn = build_model("cnn", in_channels=3, num_classes=10, norm="bn", pool="avg", activation="elu")
    kinds = [type(x) for x in bn.blocks[0]]
    assert kinds == [nn.Conv2d, nn.ELU, nn.BatchNorm2d, nn.AvgPool2d]  # conv -> act -> BN -> pool
    lb = build_model("cnn", in_channels=3, num_classes=10, channels=[16, 32], norm="ln")
    assert isinstance(lb.blocks[1][2], ChannelLayerNorm) and lb.head.in_features == 32 * 8 * 8


def test_channel_layer_norm_normalises_over_channels() -> None:
    ln = ChannelLayerNorm(6)
    y = ln(torch.randn(2, 6, 4, 4) * 5 + 3)
    assert torch.allclose(y.mean(1), torch.zeros(2, 4, 4), atol=1e-5)
    assert torch.allclose(y.var(1, unbiased=False), torch.ones(2, 4, 4), atol=1e-3)


def test_resnet18_standard_size_and_layout() -> None:
    m = build_model("resnet18")
    assert n_params(m) == 11_173_962  # the usual CIFAR ResNet-18
    assert m.conv1.kernel_size == (3, 3) and m.conv1.stride == (1, 1)
    assert not any(isinstance(x, nn.MaxPool2d) for x in m.modules())
    keys = set(m.state_dict())
    assert {"conv1.weight", "bn1.weight", "layer2.0.downsample.0.weight", "layer4.1.bn2.running_var",
            "fc.weight"} <= keys


def test_groupnorm_resnet_has_no_batchnorm() -> None:
    m = build_model("resnet18", norm="gn")
    assert not any(isinstance(x, nn.modules.batchnorm._BatchNorm) for x in m.modules())
    gns = [x for x in m.modules() if isinstance(x, nn.GroupNorm)]
    assert len(gns) == 20 and all(g.num_channels // g.num_groups == 32 for g in gns)
    assert not any(name.endswith(("running_mean", "running_var")) for name in m.state_dict())
    small = build_model("resnet18", norm="gn", width=8)
    assert small(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_gn_groups() -> None:
    assert gn_groups(64) == 2 and gn_groups(512) == 16 and gn_groups(16) == 1 and gn_groups(96) == 3
    assert gn_groups(80) == 2 and 100 % gn_groups(100) == 0


def test_vgg11() -> None:
    m = build_model("vgg11")
    convs = [x for x in m.features if isinstance(x, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 256, 512, 512, 512, 512]
    linears = [x for x in m.classifier if isinstance(x, nn.Linear)]
    assert [(x.in_features, x.out_features) for x in linears] == [(512, 512), (512, 512), (512, 10)]
    assert not any(isinstance(x, nn.Dropout) for x in m.modules())
    bn = build_model("vgg11", norm="bn", width=4, classifier_widths=[])
    assert sum(isinstance(x, nn.BatchNorm2d) for x in bn.modules()) == 8
    assert bn(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_wrn_sizes_and_bn_free_variant() -> None:
    assert n_params(build_model("wrn")) == 2_748_890  # WRN-16-4
    free = build_model("wrn", depth=16, widen=2, norm=None)
    assert not any(isinstance(x, (nn.BatchNorm2d, nn.GroupNorm)) for x in free.modules())
    torch.manual_seed(0)
    out = free.eval()(torch.randn(8, 3, 32, 32))
    assert out.shape == (8, 10) and torch.isfinite(out).all() and 0.01 < float(out.std()) < 10
    skip = build_model("wrn", depth=10, widen=1, norm=None, residual_gain=0.0)
    gains = [p for n, p in skip.named_parameters() if n.endswith("gain")]
    assert len(gains) == 3 and all(float(g) == 0 for g in gains)


def test_no_inplace_modules_anywhere() -> None:
    for name, kw in [("resnet18", {"width": 4}), ("vgg11", {"width": 2}), ("wrn", {"depth": 10, "widen": 1}),
                     ("cnn", {"in_channels": 3, "num_classes": 2}), ("mlp", {"in_features": 3, "num_classes": 2})]:
        m = build_model(name, **kw)
        assert not any(getattr(x, "inplace", False) for x in m.modules()), name
