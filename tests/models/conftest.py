"""Model tests run single-threaded (their tensors are tiny; see ``single_thread`` in tests/conftest.py)."""

import pytest


@pytest.fixture(autouse=True)
def _one_thread(single_thread: None) -> None:
    """Apply the shared ``single_thread`` fixture to every model test."""
