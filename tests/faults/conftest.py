"""The fault-injection suite's references: one uninterrupted run per config, shared by its tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from sharpscope.track import TrainConfig
from tests.faults.faults_helpers import reference_records

collect_ignore = ["killer.py"]  # a script the kill tests run in a child process, not a test module


@pytest.fixture(scope="session")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Callable[[TrainConfig], list[dict[str, Any]]]:
    root = tmp_path_factory.mktemp("references")
    return lambda cfg: reference_records(cfg, root)
