"""Model registry: a name plus JSON keyword arguments (a :class:`ModelSpec`) builds a model.

The spec is what checkpoints store, so a checkpoint can be reloaded without code.

>>> spec = ModelSpec("mlp", {"in_features": 4, "num_classes": 3, "widths": [8]})
>>> ModelSpec.from_dict(spec.to_dict()) == spec
True
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, TypeVar, get_args

import torch
from torch import nn

from sharpscope.errors import ConfigError, SharpscopeError

F = TypeVar("F", bound=Callable[..., nn.Module])
ModelDtype = Literal["float32", "float64"]
MODEL_DTYPES: tuple[str, ...] = get_args(ModelDtype)
#: The torch dtype of each :data:`ModelDtype` name (the dtypes a trained or sliced model is held in).
DTYPES: dict[str, torch.dtype] = {name: getattr(torch, name) for name in MODEL_DTYPES}
_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[F], F]:
    """Decorator: make ``factory(**kwargs) -> nn.Module`` buildable as ``name``."""
    if not isinstance(name, str) or not name or name != name.strip():
        raise ConfigError(f"model name must be a non-empty string without surrounding spaces, got {name!r}")

    def deco(factory: F) -> F:
        old = _REGISTRY.get(name)
        if old is not None and (old.__module__, old.__qualname__) != (factory.__module__, factory.__qualname__):
            raise ConfigError(f"model name {name!r} is already registered by {old.__module__}.{old.__qualname__}")
        _REGISTRY[name] = factory
        return factory

    return deco


def available_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_REGISTRY)


def model_kwargs(name: str) -> dict[str, Any]:
    """The keyword arguments ``name`` takes, with their defaults (``inspect.Parameter.empty`` if required)."""
    factory = _lookup(name)
    return {p.name: p.default for p in inspect.signature(factory).parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _lookup(name: str) -> Callable[..., nn.Module]:
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown model {name!r}; valid: {', '.join(available_models())}") from None


def _describe(params: Mapping[str, Any]) -> str:
    return ", ".join(k if v is inspect.Parameter.empty else f"{k}={v!r}" for k, v in params.items())


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name``; unknown names or arguments raise :class:`ConfigError`."""
    factory = _lookup(name)
    params = model_kwargs(name)
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise ConfigError(f"model {name!r} does not take {unknown}; valid kwargs: {_describe(params)}")
    missing = [k for k, v in params.items() if v is inspect.Parameter.empty and k not in kwargs]
    if missing:
        raise ConfigError(f"model {name!r} needs {missing}; valid kwargs: {_describe(params)}")
    try:
        model = factory(**kwargs)
    except SharpscopeError:
        raise
    except (TypeError, ValueError, RuntimeError) as e:
        raise ConfigError(f"model {name!r} cannot be built with {kwargs}: {e}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model factory {name!r} returned {type(model).__name__}, not an nn.Module")
    return model


def _json_normal(kwargs: Mapping[str, Any], what: str) -> dict[str, Any]:
    try:
        return json.loads(json.dumps(dict(kwargs), allow_nan=False))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{what} must be JSON-serializable (numbers, strings, lists, dicts): {e}") from None


@dataclass(frozen=True)
class ModelSpec:
    """A registered model name and its keyword arguments (normalised to JSON types: tuples become lists)."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"model spec name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.kwargs, Mapping) or not all(isinstance(k, str) for k in self.kwargs):
            raise ConfigError(f"model spec kwargs must be a dict with string keys, got {self.kwargs!r}")
        object.__setattr__(self, "kwargs", _json_normal(self.kwargs, f"kwargs of model {self.name!r}"))

    def __hash__(self) -> int:
        return hash(self.to_json())

    def to_dict(self) -> dict[str, Any]:
        """``{"name": ..., "kwargs": {...}}`` (a deep copy)."""
        return asdict(self)

    def to_json(self) -> str:
        """Compact JSON with sorted keys."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelSpec:
        """Inverse of :meth:`to_dict`."""
        if not isinstance(d, Mapping) or "name" not in d:
            raise ConfigError(f"a model spec is a dict with 'name' and 'kwargs', got {d!r}")
        extra = sorted(set(d) - {"name", "kwargs"})
        if extra:
            raise ConfigError(f"model spec has unknown fields {extra}; expected 'name' and 'kwargs'")
        return cls(d["name"], d.get("kwargs") or {})

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        """Inverse of :meth:`to_json`."""
        try:
            d = json.loads(text)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"model spec is not valid JSON: {e}") from None
        return cls.from_dict(d)

    def build(self) -> nn.Module:
        """``build_model(name, **kwargs)``."""
        return build_model(self.name, **self.kwargs)
