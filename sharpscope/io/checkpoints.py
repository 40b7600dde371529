"""Model checkpoints that carry their model spec, saved atomically and loaded without pickles.

Formats
-------
* ``.safetensors`` (default): the state dict's tensors, plus string metadata ``format``
  (``"sharpscope-1"``), ``spec`` (the :class:`~sharpscope.models.ModelSpec` as JSON) and
  ``extra`` (JSON).
* ``.pt`` / ``.pth`` / ``.ckpt``: ``torch.save`` of ``{"format": "sharpscope-1", "state_dict",
  "spec" (dict or None), "extra"}`` holding only tensors, dicts, lists, strings, numbers, bools
  and None, so it loads under ``torch.load(weights_only=True)``.

Loading accepts these and foreign checkpoints: plain state dicts, and dicts with a
``"state_dict"``, ``"model_state_dict"`` or ``"model"`` entry. Pickles that need any other Python
object are refused (their code never runs) unless ``unsafe_load=True`` (CLI ``--unsafe-load``),
which also accepts a whole pickled ``nn.Module``.

>>> import tempfile, pathlib
>>> from sharpscope.models import ModelSpec
>>> spec = ModelSpec("mlp", {"in_features": 4, "num_classes": 2, "widths": [3]})
>>> path = pathlib.Path(tempfile.mkdtemp()) / "m.safetensors"
>>> _ = save_checkpoint(path, spec.build(), spec=spec, extra={"step": 7})
>>> load_checkpoint(path).extra
{'step': 7}
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import math
import os
import pickle
import re
import sys
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sharpscope.errors import CheckpointError, ConfigError, SharpscopeError
from sharpscope.io import checksums, runlayout
from sharpscope.io.atomic import atomic_write
from sharpscope.models.registry import ModelSpec
from sharpscope.validation import check_module_path

FORMAT = "sharpscope-1"
TORCH_SUFFIXES = (".pt", ".pth", ".ckpt")
SAFETENSORS_SUFFIX = ".safetensors"
_STATE_KEYS = ("state_dict", "model_state_dict", "model")
_SHOW = 3  # names listed per kind of mismatch


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A model with the checkpoint's weights, its stored spec (None if none) and extra data."""

    model: nn.Module
    spec: ModelSpec | None
    extra: dict[str, Any]
    path: Path
    format: str = "safetensors"  # "safetensors" or "torch"


@dataclass(frozen=True)
class RawCheckpoint:
    """What a checkpoint file holds, before any model is built (see :func:`read_checkpoint`)."""

    state_dict: dict[str, Tensor]
    spec: ModelSpec | None
    extra: dict[str, Any]
    path: Path
    format: str
    module: nn.Module | None = field(default=None, repr=False)  # a whole pickled module (unsafe_load)


# ----------------------------------------------------------------- saving
def _state_tensors(model: nn.Module) -> dict[str, Tensor]:
    if not isinstance(model, nn.Module):
        raise ConfigError(f"save_checkpoint needs an nn.Module, got {type(model).__name__}")
    out = {}
    for k, v in model.state_dict().items():
        if not isinstance(v, Tensor):
            raise CheckpointError(f"state dict entry {k!r} is a {type(v).__name__}, not a tensor; it cannot be saved")
        out[k] = v.detach().to("cpu", copy=True).contiguous()  # own storage: no sharing, no views
    return out


def _check_extra(value: Any, where: str, allow_tensors: bool) -> None:
    if value is None or isinstance(value, (bool, int, str)):
        return
    if isinstance(value, float):
        if not allow_tensors and not math.isfinite(value):
            raise ConfigError(f"checkpoint extra {where} is {value}; JSON cannot hold it (use a .pt checkpoint or a string)")
        return
    if isinstance(value, Tensor):
        if not allow_tensors:
            raise ConfigError(f"checkpoint extra {where} is a tensor; .safetensors extra must be JSON (use .pt, or .tolist())")
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_extra(v, f"{where}[{i}]", allow_tensors)
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                raise ConfigError(f"checkpoint extra {where} has key {k!r}; keys must be strings or integers")
            _check_extra(v, f"{where}[{k!r}]", allow_tensors)
        return
    raise ConfigError(f"checkpoint extra {where} is a {type(value).__name__}; allowed: dict, list, str, numbers, "
                      "bool, None" + (", tensors" if allow_tensors else ""))


def _format_of(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == SAFETENSORS_SUFFIX:
        return "safetensors"
    if suffix in TORCH_SUFFIXES:
        return "torch"
    raise ConfigError(f"checkpoint path {path} must end in {SAFETENSORS_SUFFIX} or one of {', '.join(TORCH_SUFFIXES)}")


def save_checkpoint(path: str | os.PathLike[str], model: nn.Module, *, spec: ModelSpec | None,
                    extra: Mapping[str, Any] | None = None, checksum: bool = True) -> Path:
    """Write ``model``'s state dict with ``spec`` and ``extra`` to ``path`` atomically; returns the path.

    A path without a suffix gets ``.safetensors``. ``extra`` must be JSON-serializable for
    ``.safetensors``; for ``.pt`` it may also hold tensors (e.g. an optimizer state). With
    ``checksum`` the file's SHA-256 is then recorded in ``SHA256SUMS`` next to it
    (:mod:`sharpscope.io.checksums`), which :func:`read_checkpoint` verifies.
    """
    path = Path(path)
    if not path.suffix:
        path = path.with_name(path.name + SAFETENSORS_SUFFIX)
    fmt = _format_of(path)
    if spec is not None and not isinstance(spec, ModelSpec):
        raise ConfigError(f"spec must be a ModelSpec or None, got {type(spec).__name__}")
    extra = {} if extra is None else extra
    if not isinstance(extra, Mapping):
        raise ConfigError(f"checkpoint extra must be a dict, got {type(extra).__name__}")
    extra = dict(extra)
    _check_extra(extra, "", allow_tensors=fmt == "torch")
    tensors = _state_tensors(model)
    if fmt == "safetensors":
        from safetensors.torch import save as st_save

        meta = {"format": FORMAT, "extra": json.dumps(extra, allow_nan=False)}
        if spec is not None:
            meta["spec"] = spec.to_json()
        blob = st_save(tensors, metadata=meta)
        atomic_write(path, lambda f: f.write(blob))
    else:
        payload = {"format": FORMAT, "state_dict": tensors, "spec": None if spec is None else spec.to_dict(),
                   "extra": extra}
        buf = io.BytesIO()
        torch.save(payload, buf)
        atomic_write(path, lambda f: f.write(buf.getbuffer()))
    if checksum:
        checksums.record(path)
    return path


# ----------------------------------------------------------------- reading
@contextlib.contextmanager
def _cwd_on_path() -> Iterator[None]:
    """Make modules in the current directory importable (model factories, unsafe unpickling)."""
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(cwd)


def _parse_spec(value: Any, path: Path) -> ModelSpec | None:
    if value is None:
        return None
    try:
        return ModelSpec.from_json(value) if isinstance(value, str) else ModelSpec.from_dict(value)
    except ConfigError as e:
        raise CheckpointError(f"{path}: stored model spec is unreadable ({e})") from None


def _read_safetensors(path: Path, map_location: Any) -> RawCheckpoint:
    from safetensors import safe_open

    if map_location is None:
        map_location = "cpu"
    if not isinstance(map_location, (str, torch.device)):
        raise ConfigError(f"map_location for .safetensors must be a device, got {map_location!r}")
    try:
        with safe_open(str(path), framework="pt", device=str(map_location)) as f:
            meta = f.metadata() or {}
            sd = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (a safetensors handle, not a dict)
    except Exception as e:  # SafetensorError, OSError, ...: all mean the file cannot be used
        raise CheckpointError(f"{path}: truncated or corrupt .safetensors file ({type(e).__name__}: {e})") from None
    try:
        extra = json.loads(meta["extra"]) if "extra" in meta else {}
    except ValueError as e:
        raise CheckpointError(f"{path}: 'extra' metadata is not JSON ({e})") from None
    if not isinstance(extra, dict):
        raise CheckpointError(f"{path}: 'extra' metadata is a {type(extra).__name__}, expected a JSON object")
    return RawCheckpoint(sd, _parse_spec(meta.get("spec"), path), extra, path, "safetensors")


def _refusal_reason(message: str) -> str:
    """The part of torch's weights-only error that names what was refused."""
    m = re.search(r"unsupported GLOBAL ([\w.]+)", message)
    if m:
        return f"global {m.group(1)}"
    m = re.search(r"(Unsupported (?:operand|class) [\w.]+)", message)
    if m:
        return m.group(1)
    return "objects outside the weights-only allow-list"


def _looks_like_torch_file(path: Path) -> bool:
    """A zip archive (``torch.save``) or a pickle stream (protocol 2 to 5): what a real checkpoint starts with."""
    with open(path, "rb") as f:
        head = f.read(4)
    return head[:4] == b"PK\x03\x04" or (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"))


def _read_torch(path: Path, unsafe_load: bool, map_location: Any, unsafe_flag: str | None) -> RawCheckpoint:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            if unsafe_load:
                with _cwd_on_path():
                    obj = torch.load(path, map_location=map_location, weights_only=False)
            else:
                obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        if not _looks_like_torch_file(path):
            raise CheckpointError(f"{path}: truncated or corrupt checkpoint (neither a torch.save zip archive "
                                  "nor a pickle stream)") from None
        reason = _refusal_reason(msg)
        if not unsafe_load and "Weights only load failed" in msg and "truncated" not in msg:
            advice = ("if you trust the file, pass unsafe_load=True" + (f" (CLI: {unsafe_flag})" if unsafe_flag else "")
                      if unsafe_flag != "" else "this command loads weights-only checkpoints: save the "
                      "model's state_dict() with torch.save and pass that file")
            raise CheckpointError(
                f"{path}: refused: the pickle needs Python objects beyond tensors and plain containers "
                f"({reason}), and loading it could run arbitrary code; {advice}") from None
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({msg.splitlines()[0] if msg else 'UnpicklingError'})") from None
    except Exception as e:  # RuntimeError, EOFError, struct.error, KeyError, ...: unreadable file
        if unsafe_load and isinstance(e, (ImportError, AttributeError)):
            raise CheckpointError(f"{path}: the pickle refers to code that cannot be imported here "
                                  f"({type(e).__name__}: {e})") from None
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({type(e).__name__}: {e})") from None
    return _interpret(obj, path)


def _as_state_dict(obj: Any, path: Path, where: str) -> dict[str, Tensor]:
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: {where} is a {type(obj).__name__}, not a state dict")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        k = bad[0]
        raise CheckpointError(f"{path}: {where} is not a state dict: entry {k!r} holds a {type(obj[k]).__name__} "
                              f"({len(bad)} non-tensor entries)")
    if not obj:
        raise CheckpointError(f"{path}: {where} is empty")
    return dict(obj)


def _interpret(obj: Any, path: Path) -> RawCheckpoint:
    if isinstance(obj, nn.Module):
        return RawCheckpoint(dict(obj.state_dict()), None, {}, path, "torch", module=obj)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict or a model")
    if obj.get("format") == FORMAT:
        extra = obj.get("extra") or {}
        if not isinstance(extra, dict):
            raise CheckpointError(f"{path}: 'extra' is a {type(extra).__name__}, expected a dict")
        return RawCheckpoint(_as_state_dict(obj.get("state_dict"), path, "'state_dict'"),
                             _parse_spec(obj.get("spec"), path), extra, path, "torch")
    for key in _STATE_KEYS:
        if key in obj and (isinstance(obj[key], (Mapping, nn.Module))):
            inner = obj[key]
            if isinstance(inner, nn.Module):
                return RawCheckpoint(dict(inner.state_dict()), None, {}, path, "torch", module=inner)
            return RawCheckpoint(_as_state_dict(inner, path, f"{key!r}"), None, {}, path, "torch")
    return RawCheckpoint(_as_state_dict(obj, path, "the file"), None, {}, path, "torch")


def read_checkpoint(path: str | os.PathLike[str], *, unsafe_load: bool = False,
                    map_location: Any = "cpu", unsafe_flag: str | None = "--unsafe-load") -> RawCheckpoint:
    """Read a checkpoint's state dict, spec and extra without building a model.

    A file with a ``SHA256SUMS`` next to it is verified first, before any byte is unpickled: a mismatch
    raises :class:`CheckpointError` ("corrupt file"), and so does a file the manifest does not record (a
    write that did not finish, a file copied in later, a damaged manifest). A checkpoint inside a run
    directory written with checksums needs its manifest (:func:`~sharpscope.io.runlayout.verify_checkpoint`). ``unsafe_flag`` is the
    command-line flag that a refusal of an unsafe pickle names (``""``: the command has none).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        _verify(path)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read the file ({e.strerror or e})") from None
    suffix = path.suffix.lower()
    if suffix == SAFETENSORS_SUFFIX:
        return _read_safetensors(path, map_location)
    if suffix in TORCH_SUFFIXES:
        return _read_torch(path, unsafe_load, map_location, unsafe_flag)
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) == 9 and head[8:9] == b"{":
        return _read_safetensors(path, map_location)
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
        return _read_torch(path, unsafe_load, map_location, unsafe_flag)
    raise CheckpointError(f"{path}: unknown checkpoint format; expected {SAFETENSORS_SUFFIX} or "
                          f"{'/'.join(TORCH_SUFFIXES)} (torch.save)")


def _verify(path: Path) -> None:
    """Check ``path`` against the manifest beside it (see :func:`read_checkpoint`)."""
    verdict = runlayout.verify_checkpoint(path, runlayout.run_of_checkpoint(path))
    if verdict != "unrecorded":
        return
    manifest = checksums.manifest_path(path)
    if not manifest.is_file():
        state = "is missing, though the run was written with checksums"
    else:
        damaged = checksums.unreadable_lines(manifest.parent)
        state = "does not record it" + (f" ({damaged} of its lines are unreadable)" if damaged else "")
    raise CheckpointError(f"{path}: cannot be verified: {manifest} {state} (a write that did not finish, a file "
                          f"copied in later, or a damaged manifest); if you trust the file, add its line to the "
                          f"manifest (sha256sum {path.name} >> {checksums.MANIFEST}, in that folder)")


# ----------------------------------------------------------------- building and fitting
def _import_factory(target: str) -> nn.Module:
    check_module_path("model factory", target)
    module_name, _, attr = target.partition(":")
    with _cwd_on_path():
        try:
            obj: Any = importlib.import_module(module_name)
        except ImportError as e:
            raise CheckpointError(f"cannot import model factory module {module_name!r} ({e})") from None
        for part in attr.split("."):
            try:
                obj = getattr(obj, part)
            except AttributeError:
                raise CheckpointError(f"model factory {target!r}: {module_name!r} has no attribute {attr!r}") from None
        if not callable(obj):
            raise CheckpointError(f"model factory {target!r} is not callable")
        try:
            model = obj()
        except SharpscopeError:
            raise
        except Exception as e:
            raise CheckpointError(f"model factory {target!r} failed: {type(e).__name__}: {e}") from None
    if not isinstance(model, nn.Module):
        raise CheckpointError(f"model factory {target!r} returned a {type(model).__name__}, not an nn.Module")
    return model


def _strip_prefix(sd: dict[str, Tensor], want: set[str]) -> dict[str, Tensor]:
    """Drop one common leading component (``module.`` from DDP, ``model.`` from wrappers) if that makes the keys fit."""
    if set(sd) == want:
        return sd
    firsts = {k.split(".", 1)[0] for k in sd}
    if len(firsts) == 1 and all("." in k for k in sd):
        prefix = next(iter(firsts)) + "."
        stripped = {k[len(prefix):]: v for k, v in sd.items()}
        if set(stripped) == want:
            return stripped
    return sd


def _names(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOW])
    return shown + (f", ... (+{len(keys) - _SHOW})" if len(keys) > _SHOW else "")


def fit_state_dict(model: nn.Module, state_dict: Mapping[str, Tensor], *, source: str = "checkpoint") -> None:
    """Load ``state_dict`` into ``model`` strictly; mismatches raise one :class:`CheckpointError` line."""
    own = model.state_dict()
    sd = _strip_prefix(dict(state_dict), set(own))
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k} (model {tuple(own[k].shape)} vs checkpoint {tuple(sd[k].shape)})"
              for k in own if k in sd and tuple(own[k].shape) != tuple(sd[k].shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing: {_names(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected: {_names(unexpected)}")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatches: {_names(shapes)}")
    if problems:
        raise CheckpointError(f"{source} does not fit {type(model).__name__}: " + "; ".join(problems))
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{source} does not fit {type(model).__name__}: {str(e).splitlines()[0]}") from None


def load_checkpoint(path: str | os.PathLike[str], *, model: nn.Module | None = None, model_factory: str | None = None,
                    unsafe_load: bool = False, map_location: Any = "cpu") -> LoadedCheckpoint:
    """Load a checkpoint into a model.

    The model is, in order: ``model`` if given (loaded in place), else ``model_factory()`` for a
    ``"module:function"`` string (imported with the current directory on ``sys.path``), else
    built from the spec stored in the checkpoint, else (``unsafe_load`` only) the pickled module
    itself. Explicit arguments win over the stored spec so a user can always override it. A
    model built here is moved to ``map_location`` when that is a device.
    """
    if model is not None and model_factory is not None:
        raise ConfigError("give either model or model_factory, not both")
    if model is not None and not isinstance(model, nn.Module):
        raise ConfigError(f"model must be an nn.Module, got {type(model).__name__}")
    raw = read_checkpoint(path, unsafe_load=unsafe_load, map_location=map_location)
    built = model is None
    if model is not None:
        target = model
    elif model_factory is not None:
        target = _import_factory(model_factory)
    elif raw.spec is not None:
        try:
            target = raw.spec.build()
        except ConfigError as e:
            raise CheckpointError(f"{raw.path}: cannot build the stored model spec {raw.spec.to_json()} ({e}); "
                                  "pass model= or model_factory='module:function' (CLI --model)") from None
    elif raw.module is not None:
        target = raw.module
    else:
        raise CheckpointError(f"{raw.path}: no model spec stored; pass model= or model_factory='module:function' "
                              "(CLI --model)")
    if target is not raw.module:
        fit_state_dict(target, raw.state_dict, source=str(raw.path))
    if built and isinstance(map_location, (str, torch.device)):
        target = target.to(map_location)
    return LoadedCheckpoint(target, raw.spec, raw.extra, raw.path, raw.format)
