"""Fixtures shared by every test folder."""

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture
def single_thread() -> Iterator[None]:
    """Run one test on one torch thread, restoring the count after.

    For tests of tiny tensors: on a loaded 2-core machine, OpenMP threads competing with another
    process (a CLI subprocess, a parallel run) slow small ops down by 10-50x.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def private_mode_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets an empty on-disk product-mode cache of its own (no choice leaks between tests or
    from the user's cache into a test)."""
    monkeypatch.setenv("SHARPSCOPE_CACHE_DIR", str(tmp_path_factory.mktemp("sharpscope-cache")))
