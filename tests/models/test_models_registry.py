import json

import pytest
from torch import nn

from sharpscope.errors import ConfigError
from sharpscope.models import ModelSpec, available_models, build_model, model_kwargs, register_model, registry


def shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_builtin_models_are_registered() -> None:
    assert {"mlp", "cnn", "resnet18", "vgg11", "wrn"} <= set(available_models())


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ConfigError, match=r"unknown model 'resnet50'; valid: .*cnn.*mlp.*resnet18"):
        build_model("resnet50")


def test_bad_kwargs_list_valid_kwargs() -> None:
    with pytest.raises(ConfigError, match=r"does not take \['depth'\]; valid kwargs: in_features, num_classes, widths="):
        build_model("mlp", in_features=3, num_classes=2, depth=4)
    with pytest.raises(ConfigError, match=r"needs \['num_classes'\]"):
        build_model("mlp", in_features=3)
    with pytest.raises(ConfigError, match="unknown activation 'swish'"):
        build_model("mlp", in_features=3, num_classes=2, activation="swish")
    with pytest.raises(ConfigError, match="unknown norm 'ln'"):
        build_model("resnet18", norm="ln")
    with pytest.raises(ConfigError, match="6n\\+4"):
        build_model("wrn", depth=15)
    with pytest.raises(ConfigError, match="widths"):
        build_model("mlp", in_features=3, num_classes=2, widths="200")
    assert model_kwargs("cnn")["pool"] == "max"


@pytest.mark.parametrize("spec", [
    ModelSpec("mlp", {"in_features": 12, "num_classes": 3, "widths": (5, 4)}),
    ModelSpec("cnn", {"in_channels": 1, "num_classes": 4, "channels": [4, 8], "norm": "ln", "image_size": 8}),
    ModelSpec("resnet18", {"width": 4, "norm": "gn"}),
    ModelSpec("vgg11", {"width": 2, "norm": "bn"}),
    ModelSpec("wrn", {"depth": 10, "widen": 1, "norm": None}),
])
def test_spec_round_trip_builds_same_shapes(spec: ModelSpec) -> None:
    again = ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec and hash(again) == hash(spec)
    assert ModelSpec.from_json(spec.to_json()) == spec
    assert shapes(again.build()) == shapes(spec.build())


def test_spec_normalises_to_json_types() -> None:
    spec = ModelSpec("mlp", {"in_features": 2, "num_classes": 2, "widths": (3,)})
    assert spec.kwargs["widths"] == [3]
    d = spec.to_dict()
    d["kwargs"]["widths"].append(9)  # a copy: the spec is unchanged
    assert spec.kwargs["widths"] == [3]
    with pytest.raises(ConfigError, match="JSON"):
        ModelSpec("mlp", {"act": nn.ReLU()})
    with pytest.raises(ConfigError):
        ModelSpec.from_dict({"name": "mlp", "kwargs": {}, "version": 2})
    with pytest.raises(ConfigError):
        ModelSpec.from_json("{not json")


def test_register_custom_model() -> None:
    @register_model("_test_tiny")
    def tiny(width: int = 3) -> nn.Module:
        return nn.Linear(2, width)

    try:
        assert "_test_tiny" in available_models()
        assert ModelSpec("_test_tiny", {"width": 5}).build().out_features == 5
        register_model("_test_tiny")(tiny)  # the same factory again is fine
        with pytest.raises(ConfigError, match="already registered"):
            register_model("_test_tiny")(lambda: nn.Linear(1, 1))
    finally:
        registry._REGISTRY.pop("_test_tiny", None)


def test_factory_must_return_module() -> None:
    register_model("_test_bad")(lambda: "not a module")
    try:
        with pytest.raises(ConfigError, match="not an nn.Module"):
            build_model("_test_bad")
    finally:
        registry._REGISTRY.pop("_test_bad", None)
