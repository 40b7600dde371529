"""Label noise (a fixed draw or a fresh draw at every step) and the random-label "confusion" set used to
build bad minima (Liu et al. 2020; Damian et al. 2021)."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from sharpscope.data.dataset import ArrayDataset
from sharpscope.errors import DataError
from sharpscope.validation import check_choice, check_int, check_real, check_seed, check_type

_CHUNK = 4096


def _check_generator(generator: torch.Generator) -> None:
    check_type("generator", generator, torch.Generator, "a torch.Generator (explicit seeds)")


def label_noise(y: Tensor, p: float, num_classes: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Flip each label with probability ``p`` to a class drawn uniformly among the *other* classes.

    Returns ``(noisy, mask)`` where ``mask`` is True where the label was flipped (so
    ``noisy[mask] != y[mask]`` always, and ``noisy[~mask] == y[~mask]``). The resulting label
    distribution — keep with probability ``1-p``, each other class with ``p/(K-1)`` — is the same
    as Damian et al.'s "resample from the smoothed distribution". The same
    random numbers are drawn whatever ``p`` is, so runs differing only in ``p`` stay coupled.

    >>> g = torch.Generator().manual_seed(0)
    >>> noisy, mask = label_noise(torch.zeros(5, dtype=torch.long), 1.0, 10, g)
    >>> bool(mask.all()) and bool((noisy != 0).all())
    True
    """
    _check_generator(generator)
    p = check_real("label-noise probability", p, low=0.0, high=1.0)
    check_int("num_classes", num_classes, low=2)
    if not isinstance(y, Tensor) or y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise DataError(f"labels must be an integer tensor, got {getattr(y, 'dtype', type(y).__name__)}")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise DataError(f"labels out of range: found {int(y.min())}..{int(y.max())}, expected 0..{num_classes - 1}")
    dev = generator.device
    flip = torch.rand(y.shape, generator=generator, device=dev) < float(p)
    offset = torch.randint(1, num_classes, y.shape, generator=generator, device=dev)
    flip, offset = flip.to(y.device), offset.to(y.device, y.dtype)
    noisy = torch.where(flip, (y + offset) % num_classes, y)
    return noisy, flip


def step_generator(seed: int, step: int) -> torch.Generator:
    """A CPU generator determined by ``(seed, step)`` alone (numpy's ``SeedSequence([seed, step])``),
    so the draws of step ``t`` need no state from earlier steps: a resumed run redraws them exactly."""
    import numpy as np

    check_seed("seed", seed)
    check_int("step", step, low=0)
    state = int(np.random.SeedSequence([seed, step]).generate_state(1, np.uint64)[0])
    return torch.Generator().manual_seed(state)


def fresh_label_noise(y: Tensor, p: float, num_classes: int, *, seed: int, step: int) -> Tensor:
    """The labels of the mini-batch of step ``step`` with fresh noise (Damian et al.'s label-noise SGD):
    :func:`label_noise` with the generator :func:`step_generator` ``(seed, step)``.

    >>> y = torch.arange(10) % 10
    >>> bool((fresh_label_noise(y, 0.5, 10, seed=1, step=7) == fresh_label_noise(y, 0.5, 10, seed=1, step=7)).all())
    True
    """
    return label_noise(y, p, num_classes, step_generator(seed, step))[0]


def confusion_set(x: Tensor | ArrayDataset, num_classes: int, *, copies: int = 10, zero_frac: float = 0.1,
                  mode: Literal["pixel", "entry"] = "pixel", generator: torch.Generator,
                  fill: float = 0.0) -> ArrayDataset:
    """Random-label copies of ``x`` with part of each copy zeroed (Liu et al.; Damian et al.).

    Each of the ``copies`` copies of every example gets exactly ``floor(zero_frac * P)`` of its
    ``P`` positions set to ``fill`` (independently per copy) and a label drawn uniformly from
    ``0..num_classes-1``. The originals are not included. ``mode``:

    * ``"pixel"`` (Damian et al.): positions are spatial locations, all channels zeroed together;
      ``x`` is (N, C, H, W) (P = H*W), (N, H, W) or (N, D) (one channel).
    * ``"entry"`` (Liu et al.): positions are individual entries (P = all entries of an example).

    Rows are copy-major: rows ``k*N .. (k+1)*N - 1`` are copy ``k`` of examples ``0..N-1``. The
    zeros are written into the tensor given: pass raw [0, 1] images and standardize afterwards for
    black pixels (as Liu et al. did), or standardized images for mean-valued ones.

    Differences to Damian et al.'s code, kept on purpose: their 102 positions
    are drawn *with* replacement (about 97 distinct positions on average) and their copies are
    ordered example-major; here exactly ``floor(zero_frac * P)`` distinct positions are zeroed.
    """
    _check_generator(generator)
    if isinstance(x, ArrayDataset):
        x = x.x
    if not isinstance(x, Tensor) or not x.dtype.is_floating_point:
        raise DataError(f"confusion_set needs a floating tensor of inputs, got {getattr(x, 'dtype', type(x).__name__)}")
    if x.dim() < 2 or x.shape[0] == 0:
        raise DataError(f"confusion_set needs a non-empty batch of examples, got shape {tuple(x.shape)}")
    check_int("num_classes", num_classes, low=2)
    check_int("copies", copies, low=1)
    zero_frac = check_real("zero_frac", zero_frac, low=0.0, high=1.0)
    check_choice("mode", mode, ("pixel", "entry"))
    n = x.shape[0]
    if mode == "pixel" and x.dim() == 4:
        mask_shape = (1, *x.shape[2:])  # broadcast over channels
    elif mode == "pixel" and x.dim() > 4:
        raise DataError(f"pixel mode needs (N, C, H, W), (N, H, W) or (N, D) inputs, got {tuple(x.shape)}")
    else:
        mask_shape = tuple(x.shape[1:])
    positions = math.prod(mask_shape)
    k = math.floor(round(zero_frac * positions, 9))
    dev = generator.device
    labels = torch.randint(0, num_classes, (copies * n,), generator=generator, device=dev).to(x.device)
    out = torch.empty((copies * n, *x.shape[1:]), dtype=x.dtype, device=x.device)
    for c in range(copies):
        for i in range(0, n, _CHUNK):
            xc = x[i:i + _CHUNK]
            m = xc.shape[0]
            mask = torch.zeros(m, positions, dtype=torch.bool, device=dev)
            if k > 0:
                idx = torch.rand(m, positions, generator=generator, device=dev).topk(k, dim=1).indices
                mask.scatter_(1, idx, True)
            mask = mask.to(x.device).reshape(m, *mask_shape)
            out[c * n + i:c * n + i + m] = torch.where(mask, torch.full((), fill, dtype=x.dtype, device=x.device), xc)
    meta = {"copies": copies, "zero_frac": zero_frac, "zeroed_per_copy": k, "positions": positions, "mode": mode,
            "num_classes": num_classes, "order": "copy-major"}
    return ArrayDataset(out, labels, f"confusion(copies={copies},zero_frac={zero_frac},mode={mode})", meta)
