"""Model tests run single-threaded: their tensors are tiny, and on a loaded 2-core machine
OpenMP threads competing with other processes slow small conv ops down by 10-50x."""

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
