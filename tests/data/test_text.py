"""Byte-level language-model windows from a text file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sharpscope import ConfigError, DataError
from sharpscope.data import resolve_data
from sharpscope.data.text import byte_tokens


def test_windows_are_bytes_with_their_next_bytes(tmp_path: Path) -> None:
    text = "héllo, world: " * 10
    x, y = byte_tokens(text, seq_len=8)
    raw = list(text.encode())
    assert x.shape == (len(raw[:-1]) // 8, 8) and x.dtype == torch.int64
    assert x.flatten().tolist() == raw[: x.numel()] and y.flatten().tolist() == raw[1: x.numel() + 1]
    (tmp_path / "t.txt").write_text(text)
    data = resolve_data(f"text:{tmp_path / 't.txt'}", n=3, seq_len=8)
    assert torch.equal(data.x, x[:3]) and torch.equal(data.y, y[:3]) and data.meta["seq_len"] == 8


def test_short_texts_and_bad_lengths_fail_clearly() -> None:
    with pytest.raises(DataError, match="needs 9"):
        byte_tokens(b"12345678", seq_len=8)
    with pytest.raises(ConfigError, match="seq_len"):
        byte_tokens(b"123456789", seq_len=0)
