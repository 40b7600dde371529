"""Checkpoints of CUDA models and map_location (run with ``-m gpu``)."""

from pathlib import Path

import pytest
import torch

from sharpscope.io import load_checkpoint, save_checkpoint
from sharpscope.models import ModelSpec

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_cuda_round_trip(tmp_path: Path, suffix: str) -> None:
    spec = ModelSpec("resnet18", {"width": 8, "norm": "gn"})
    model = spec.build().cuda()
    path = save_checkpoint(tmp_path / f"m{suffix}", model, spec=spec)
    on_cpu = load_checkpoint(path)
    assert all(not p.is_cuda for p in on_cpu.model.parameters())
    on_gpu = load_checkpoint(path, map_location="cuda")
    assert all(p.is_cuda for p in on_gpu.model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), on_gpu.model.state_dict().values()))
