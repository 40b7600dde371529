import json
import os
import pickle
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from sharpscope.errors import CheckpointError, ConfigError
from sharpscope.io import FORMAT, load_checkpoint, read_checkpoint, save_checkpoint
from sharpscope.models import ModelSpec, build_model

SPEC = ModelSpec("cnn", {"in_channels": 3, "num_classes": 4, "channels": [4], "norm": "bn", "image_size": 8})


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def trained_model() -> nn.Module:
    torch.manual_seed(0)
    model = SPEC.build()
    model(torch.randn(4, 3, 8, 8))  # moves BN running stats away from their defaults
    return model


@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".pth", ".ckpt"])
def test_round_trip(tmp_path: Path, suffix: str) -> None:
    model = trained_model()
    path = save_checkpoint(tmp_path / f"m{suffix}", model, spec=SPEC, extra={"step": 12, "eta": 0.01, "tags": ["a"]})
    loaded = load_checkpoint(path)
    assert loaded.spec == SPEC and loaded.extra == {"step": 12, "eta": 0.01, "tags": ["a"]}
    assert same_weights(loaded.model, model) and loaded.model is not model
    assert float(loaded.model.blocks[0][2].running_mean.abs().sum()) > 0
    assert loaded.format == ("safetensors" if suffix == ".safetensors" else "torch")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["SHA256SUMS", path.name]  # no temporary files left


def test_pt_payload_is_weights_only_loadable(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "m.pt", trained_model(), spec=SPEC, extra={"opt": {"m": torch.ones(3)}})
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == FORMAT and payload["spec"] == SPEC.to_dict()
    assert set(payload) == {"format", "state_dict", "spec", "extra"}
    assert torch.equal(load_checkpoint(path).extra["opt"]["m"], torch.ones(3))


def test_safetensors_metadata(tmp_path: Path) -> None:
    from safetensors import safe_open

    path = save_checkpoint(tmp_path / "m", trained_model(), spec=SPEC)
    assert path.suffix == ".safetensors"
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["format"] == FORMAT and ModelSpec.from_json(meta["spec"]) == SPEC and json.loads(meta["extra"]) == {}


def test_tied_weights_are_saved(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    model[1].weight = model[0].weight
    path = save_checkpoint(tmp_path / "tied.safetensors", model, spec=None)
    fresh = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    load_checkpoint(path, model=fresh)
    assert torch.equal(fresh[1].weight, model[0].weight)


def test_bad_extra_is_refused_and_old_file_kept(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "m.safetensors", trained_model(), spec=SPEC, extra={"v": 1})
    with pytest.raises(ConfigError, match="tensor"):
        save_checkpoint(path, trained_model(), spec=SPEC, extra={"v": torch.ones(1)})
    with pytest.raises(ConfigError, match="object"):
        save_checkpoint(tmp_path / "m.pt", trained_model(), spec=SPEC, extra={"v": object()})
    with pytest.raises(ConfigError, match="must end in"):
        save_checkpoint(tmp_path / "m.bin", trained_model(), spec=SPEC)
    assert load_checkpoint(path).extra == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["SHA256SUMS", "m.safetensors"]


class Exploit:
    """Unpickling this would run code: it creates a marker file via os.system."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("how", ["torch.save", "raw pickle"])
def test_malicious_pickle_is_refused_without_running(tmp_path: Path, how: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    if how == "torch.save":
        torch.save({"state_dict": trained_model().state_dict(), "x": Exploit(marker)}, path)
    else:
        path.write_bytes(pickle.dumps(Exploit(marker)))
    with pytest.raises(CheckpointError, match=r"refused.*unsafe_load=True \(CLI: --unsafe-load\)"):
        load_checkpoint(path, model=SPEC.build())
    with pytest.raises(CheckpointError, match="refused"):
        read_checkpoint(path)
    assert not marker.exists()


def test_unsafe_load_accepts_a_whole_pickled_module(tmp_path: Path) -> None:
    model = trained_model()
    path = tmp_path / "full.pt"
    torch.save(model, path)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path)
    loaded = load_checkpoint(path, unsafe_load=True)
    assert same_weights(loaded.model, model) and loaded.spec is None
    into = SPEC.build()
    load_checkpoint(path, unsafe_load=True, model=into)
    assert same_weights(into, model)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_truncated_files(tmp_path: Path, suffix: str) -> None:
    """Without a checksum the parser itself reports the damage; with one, the checksum does first."""
    path = save_checkpoint(tmp_path / f"m{suffix}", trained_model(), spec=SPEC, checksum=False)
    data = path.read_bytes()
    for cut in (0, 5, len(data) // 2, len(data) - 3):
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match=r"m\.\w+: truncated or corrupt"):
            load_checkpoint(path)
    path = save_checkpoint(path, trained_model(), spec=SPEC)
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError, match=r"m\.\w+: corrupt file: its SHA-256"):
        load_checkpoint(path)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_a_flipped_bit_is_a_corrupt_file_and_random_bytes_are_not_called_unsafe(tmp_path: Path, suffix: str) -> None:
    path = save_checkpoint(tmp_path / f"m{suffix}", trained_model(), spec=SPEC)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt file"):
        load_checkpoint(path)
    junk = tmp_path / "loose" / "junk.pt"  # a folder without a manifest: the parser itself reports the damage
    junk.parent.mkdir()
    junk.write_bytes(bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                         dtype=torch.uint8).tolist()))
    with pytest.raises(CheckpointError, match="truncated or corrupt") as info:
        load_checkpoint(junk)
    assert "unsafe" not in str(info.value) and "arbitrary code" not in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_checkpoint(tmp_path / "nope.pt")


def test_state_dict_that_does_not_fit(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "m.pt", trained_model(), spec=SPEC)
    wider = build_model("cnn", in_channels=3, num_classes=4, channels=[6], norm="bn", image_size=8)
    with pytest.raises(CheckpointError, match=r"does not fit CNN: .*shape mismatches: blocks\.0\.0\.weight "
                                              r"\(model \(6, 3, 3, 3\) vs checkpoint \(4, 3, 3, 3\)\)"):
        load_checkpoint(path, model=wider)
    no_bn = build_model("cnn", in_channels=3, num_classes=4, channels=[4], image_size=8)
    with pytest.raises(CheckpointError, match=r"5 unexpected: blocks\.0\.2\.weight, blocks\.0\.2\.bias, "
                                              r"blocks\.0\.2\.running_mean, \.\.\. \(\+2\)"):
        load_checkpoint(path, model=no_bn)
    sd = trained_model().state_dict()
    del sd["head.bias"]
    (tmp_path / "loose").mkdir()  # beside m.pt its manifest would refuse it as unrecorded
    torch.save(sd, tmp_path / "loose" / "partial.pt")
    with pytest.raises(CheckpointError, match=r"1 missing: head\.bias"):
        load_checkpoint(tmp_path / "loose" / "partial.pt", model=SPEC.build())


@pytest.mark.parametrize("wrap", [None, "state_dict", "model_state_dict", "model", "ddp"])
def test_foreign_state_dicts(tmp_path: Path, wrap) -> None:
    model = trained_model()
    sd = model.state_dict()
    if wrap == "ddp":
        obj = {f"module.{k}": v for k, v in sd.items()}
    elif wrap:
        obj = {wrap: sd, "epoch": 3}
    else:
        obj = sd
    torch.save(obj, tmp_path / "f.pth")
    loaded = load_checkpoint(tmp_path / "f.pth", model=SPEC.build())
    assert same_weights(loaded.model, model) and loaded.spec is None and loaded.extra == {}


def test_foreign_safetensors_and_sniffing(tmp_path: Path) -> None:
    model = trained_model()
    save_file({k: v.clone() for k, v in model.state_dict().items()}, str(tmp_path / "hf.safetensors"))
    assert same_weights(load_checkpoint(tmp_path / "hf.safetensors", model=SPEC.build()).model, model)
    (tmp_path / "weights.bin").write_bytes((tmp_path / "hf.safetensors").read_bytes())
    assert read_checkpoint(tmp_path / "weights.bin").format == "safetensors"
    (tmp_path / "junk.bin").write_bytes(b"nothing useful here")
    with pytest.raises(CheckpointError, match="unknown checkpoint format"):
        read_checkpoint(tmp_path / "junk.bin")


def test_not_a_state_dict(tmp_path: Path) -> None:
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="not a state dict: entry 'epoch' holds a int"):
        load_checkpoint(tmp_path / "x.pt", model=SPEC.build())
    torch.save([torch.ones(1)], tmp_path / "l.pt")
    with pytest.raises(CheckpointError, match="holds a list"):
        load_checkpoint(tmp_path / "l.pt", model=SPEC.build())


def test_no_spec_and_no_factory(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "m.safetensors", trained_model(), spec=None)
    with pytest.raises(CheckpointError, match=r"no model spec stored; pass model= or model_factory="):
        load_checkpoint(path)


def test_model_factory_from_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = trained_model()
    path = save_checkpoint(tmp_path / "m.safetensors", model, spec=None)
    (tmp_path / "my_models_for_test.py").write_text(
        "from sharpscope.models import build_model\n"
        "def make():\n"
        "    return build_model('cnn', in_channels=3, num_classes=4, channels=[4], norm='bn', image_size=8)\n"
        "NOT_CALLABLE = 3\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "my_models_for_test", raising=False)
    try:
        loaded = load_checkpoint(path, model_factory="my_models_for_test:make")
        assert same_weights(loaded.model, model)
        assert str(tmp_path) not in sys.path  # the path change was temporary
        with pytest.raises(CheckpointError, match="has no attribute 'nothing'"):
            load_checkpoint(path, model_factory="my_models_for_test:nothing")
        with pytest.raises(CheckpointError, match="not callable"):
            load_checkpoint(path, model_factory="my_models_for_test:NOT_CALLABLE")
        with pytest.raises(CheckpointError, match="cannot import"):
            load_checkpoint(path, model_factory="no_such_module_xyz:make")
        with pytest.raises(ConfigError, match="module:function"):
            load_checkpoint(path, model_factory="my_models_for_test.make")
        with pytest.raises(ConfigError, match="not both"):
            load_checkpoint(path, model=SPEC.build(), model_factory="my_models_for_test:make")
    finally:
        sys.modules.pop("my_models_for_test", None)


def test_explicit_model_wins_over_stored_spec(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "m.pt", trained_model(), spec=SPEC)
    mine = SPEC.build()
    loaded = load_checkpoint(path, model=mine)
    assert loaded.model is mine and loaded.spec == SPEC


def test_unregistered_spec(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "m.pt", trained_model(), spec=ModelSpec("not_registered_net", {}))
    with pytest.raises(CheckpointError, match=r"cannot build the stored model spec.*unknown model 'not_registered_net'"):
        load_checkpoint(path)
    assert load_checkpoint(path, model=SPEC.build()).spec.name == "not_registered_net"
