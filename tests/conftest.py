"""Fixtures shared by every test folder; the data root for the whole run.

The library finds data files only under ``$SHARPSCOPE_DATA``; when it is unset and the repository sits
beside a ``shared/data`` folder (as CI clones it), the tests use that folder as the root. Tests that need a
file skip when it is absent.
"""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from sharpscope.data.root import DATA_ROOT_ENV

SIBLING_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if not os.environ.get(DATA_ROOT_ENV) and SIBLING_DATA.is_dir():
    os.environ[DATA_ROOT_ENV] = str(SIBLING_DATA)


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
