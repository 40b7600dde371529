"""Byte-level language-model data from any text file: no tokenizer, the 256 byte values are the vocabulary."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from sharpscope.data.dataset import ArrayDataset
from sharpscope.errors import DataError
from sharpscope.validation import check_int


def byte_tokens(text: bytes | str, seq_len: int) -> tuple[Tensor, Tensor]:
    """Next-byte prediction pairs: ids ``x`` of shape ``(B, seq_len)`` and targets ``y``, ``x`` shifted by one.

    The text is cut into ``B = (len − 1) // seq_len`` consecutive windows (ids 0..255, the tail
    dropped); ``y[b, t]`` is the byte after ``x[b, t]``.
    """
    check_int("seq_len", seq_len, low=1)
    data = text.encode() if isinstance(text, str) else bytes(text)
    windows = (len(data) - 1) // seq_len
    if windows < 1:
        raise DataError(f"the text holds {len(data)} bytes; one window of {seq_len} tokens needs {seq_len + 1}")
    ids = torch.frombuffer(bytearray(data[: windows * seq_len + 1]), dtype=torch.uint8).long()
    return ids[:-1].reshape(windows, seq_len), ids[1:].reshape(windows, seq_len)


def text_file(path: str | Path, *, n: int | None = None, seq_len: int = 64) -> ArrayDataset:
    """Windows of ``seq_len`` bytes of the file at ``path`` with their next bytes (see :func:`byte_tokens`).

    Pair it with the ``token-ce`` loss (mean cross entropy over every predicted byte). ``n`` keeps
    the first ``n`` windows.
    """
    check_int("n", n, low=1, optional=True)
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{path}: not a text file")
    x, y = byte_tokens(path.read_bytes(), seq_len)
    if n is not None:
        x, y = x[:n], y[:n]
    return ArrayDataset(x, y, f"text:{path.name}" + (f"[:{n}]" if n is not None else ""),
                        {"tokens": "bytes", "seq_len": seq_len})
