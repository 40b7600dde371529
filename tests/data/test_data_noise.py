import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sharpscope.data import ArrayDataset, confusion_set, label_noise
from sharpscope.errors import ConfigError, DataError


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_label_noise_extremes() -> None:
    y = torch.arange(1000) % 10
    same, mask = label_noise(y, 0.0, 10, gen())
    assert torch.equal(same, y) and not mask.any()
    flipped, mask = label_noise(y, 1.0, 10, gen())
    assert mask.all() and (flipped != y).all()
    assert flipped.dtype == y.dtype and flipped.min() >= 0 and flipped.max() <= 9


def test_label_noise_rate_and_uniform_other_class() -> None:
    y = torch.zeros(200_000, dtype=torch.long)
    noisy, mask = label_noise(y, 0.2, 10, gen(1))
    assert abs(float(mask.float().mean()) - 0.2) < 0.005
    counts = torch.bincount(noisy[mask], minlength=10).double()
    assert counts[0] == 0  # never "flipped" to the same class
    share = counts[1:] / counts[1:].sum()
    assert (share - 1 / 9).abs().max() < 0.01


def test_label_noise_is_seeded_and_coupled_across_p() -> None:
    y = torch.arange(500) % 7
    a, ma = label_noise(y, 0.3, 7, gen(4))
    b, mb = label_noise(y, 0.3, 7, gen(4))
    assert torch.equal(a, b) and torch.equal(ma, mb)
    _, m_small = label_noise(y, 0.1, 7, gen(4))
    assert (m_small & ~ma).sum() == 0  # same uniforms: a smaller p flips a subset


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=1, max_size=50), st.floats(0, 1), st.integers(0, 2**31))
def test_label_noise_mask_is_exactly_the_changed_labels(labels, p, seed) -> None:
    y = torch.tensor(labels)
    noisy, mask = label_noise(y, p, 5, gen(seed))
    assert torch.equal(mask, noisy != y)


def test_label_noise_errors() -> None:
    with pytest.raises(ConfigError):
        label_noise(torch.zeros(3, dtype=torch.long), 1.5, 10, gen())
    with pytest.raises(DataError, match="out of range"):
        label_noise(torch.tensor([0, 10]), 0.1, 10, gen())
    with pytest.raises(DataError):
        label_noise(torch.zeros(3), 0.1, 10, gen())
    with pytest.raises(ConfigError, match="torch.Generator"):
        label_noise(torch.zeros(3, dtype=torch.long), 0.1, 10, 0)  # type: ignore[arg-type]


def images(n: int = 6, c: int = 3, hw: int = 32) -> torch.Tensor:
    return torch.rand(n, c, hw, hw, generator=gen(9)) + 1.0  # no zeros of its own


def test_confusion_pixel_mode_zeroes_exact_spatial_fraction() -> None:
    x = images()
    conf = confusion_set(x, 10, copies=4, zero_frac=0.1, mode="pixel", generator=gen())
    assert conf.x.shape == (24, 3, 32, 32) and conf.y.shape == (24,)
    zero = conf.x == 0
    assert torch.equal(zero[:, 0], zero[:, 1]) and torch.equal(zero[:, 0], zero[:, 2])  # all channels together
    per_copy = zero[:, 0].flatten(1).sum(1)
    assert (per_copy == 32 * 32 // 10).all()  # 102, Damian et al.
    assert conf.meta["zeroed_per_copy"] == 102
    # copy-major rows: everything not zeroed is the original image; originals are not included
    for k in range(4):
        block = conf.x[k * 6:(k + 1) * 6]
        assert torch.equal(torch.where(block == 0, x, block), x)
    assert not any(torch.equal(conf.x[i], x[i % 6]) for i in range(24))
    assert conf.y.min() >= 0 and conf.y.max() <= 9


def test_confusion_entry_mode_zeroes_individual_entries() -> None:
    x = images()
    conf = confusion_set(x, 10, copies=3, zero_frac=0.1, mode="entry", generator=gen())
    per_copy = (conf.x == 0).flatten(1).sum(1)
    assert (per_copy == math.floor(0.1 * 3072)).all()  # 307, Liu et al.
    zero = conf.x == 0
    assert not (torch.equal(zero[:, 0], zero[:, 1]) and torch.equal(zero[:, 1], zero[:, 2]))


def test_confusion_copies_differ_and_labels_are_uniform() -> None:
    x = images(n=2, hw=8)
    conf = confusion_set(x, 10, copies=2000, zero_frac=0.25, generator=gen(2))
    masks = (conf.x[:, 0] == 0).flatten(1)
    assert (masks.sum(1) == 16).all()
    assert len({tuple(m.nonzero().flatten().tolist()) for m in masks[::2][:50]}) == 50
    share = torch.bincount(conf.y, minlength=10).double() / len(conf.y)
    assert (share - 0.1).abs().max() < 0.02


def test_confusion_is_seeded_and_accepts_datasets() -> None:
    x = images(n=3, hw=8)
    a = confusion_set(x, 5, copies=2, generator=gen(3))
    b = confusion_set(ArrayDataset(x, torch.zeros(3, dtype=torch.long), "d"), 5, copies=2, generator=gen(3))
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)


def test_confusion_other_shapes_and_fill() -> None:
    flat = torch.ones(4, 40)
    conf = confusion_set(flat, 10, copies=1, zero_frac=0.5, generator=gen(), fill=-1.0)
    assert ((conf.x == -1).sum(1) == 20).all()
    gray = torch.ones(4, 28, 28)
    assert ((confusion_set(gray, 10, copies=1, generator=gen()).x == 0).flatten(1).sum(1) == 78).all()
    none = confusion_set(flat, 10, copies=1, zero_frac=0.0, generator=gen())
    assert torch.equal(none.x, flat)


def test_confusion_errors() -> None:
    x = images(n=2, hw=4)
    with pytest.raises(ConfigError):
        confusion_set(x, 10, mode="row", generator=gen())  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        confusion_set(x, 10, zero_frac=1.5, generator=gen())
    with pytest.raises(ConfigError):
        confusion_set(x, 10, copies=0, generator=gen())
    with pytest.raises(DataError):
        confusion_set(torch.zeros(2, 3, dtype=torch.long), 10, generator=gen())


def test_fresh_label_noise_is_a_function_of_seed_and_step() -> None:
    """The stream needs no state: (seed, step) fixes the draw (so a resumed run redraws it), steps and
    seeds differ, and the flip rate over many steps is p within 4 standard errors."""
    from sharpscope.data import fresh_label_noise

    y = torch.arange(1000) % 10
    a = fresh_label_noise(y, 0.2, 10, seed=3, step=5)
    assert torch.equal(a, fresh_label_noise(y, 0.2, 10, seed=3, step=5))
    assert not torch.equal(a, fresh_label_noise(y, 0.2, 10, seed=3, step=6))
    assert not torch.equal(a, fresh_label_noise(y, 0.2, 10, seed=4, step=5))
    flips = torch.stack([fresh_label_noise(y, 0.2, 10, seed=0, step=t) != y for t in range(50)]).double()
    n = flips.numel()
    assert abs(float(flips.mean()) - 0.2) < 4 * (0.2 * 0.8 / n) ** 0.5
