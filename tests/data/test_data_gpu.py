"""Device paths of the data layer (run with ``-m gpu`` on a CUDA machine)."""

import json

import pytest
import torch

from sharpscope.data import ArrayDataset, ShuffledLoader, confusion_set, label_noise

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def data(n: int = 50) -> ArrayDataset:
    return ArrayDataset(torch.arange(n, dtype=torch.float32)[:, None], torch.arange(n), "toy")


@pytest.mark.parametrize("gen_device", ["cpu", "cuda"])
def test_shuffled_loader_on_gpu_resumes(gen_device: str) -> None:
    loader = ShuffledLoader(data(), 8, torch.Generator(gen_device).manual_seed(0), device="cuda")
    x, y = loader.next_batch()
    assert x.is_cuda and y.is_cuda and torch.equal(x[:, 0].long(), y)
    state = json.loads(json.dumps(loader.state_dict()))
    expected = [loader.next_batch()[1].cpu() for _ in range(12)]
    again = ShuffledLoader(data(), 8, torch.Generator(gen_device), device="cuda")
    again.load_state_dict(state)
    assert all(torch.equal(a, again.next_batch()[1].cpu()) for a in expected)


def test_noise_on_gpu() -> None:
    y = (torch.arange(1000) % 10).cuda()
    noisy, mask = label_noise(y, 0.5, 10, torch.Generator("cuda").manual_seed(1))
    assert noisy.is_cuda and torch.equal(mask, noisy != y)
    x = torch.rand(4, 3, 32, 32, device="cuda") + 1
    conf = confusion_set(x, 10, copies=2, generator=torch.Generator().manual_seed(2))
    assert conf.x.is_cuda and ((conf.x[:, 0] == 0).flatten(1).sum(1) == 102).all()
