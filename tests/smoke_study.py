"""A study run at smoke scale once per test module; skipped (naming the file) when the data root lacks a file
the study cannot do without."""

from __future__ import annotations

from pathlib import Path

import pytest

from sharpscope.data import MissingDataError
from sharpscope.experiments.studies import run_study
from sharpscope.io.studysummary import StudySummary


def run_smoke_study(name: str, factory: pytest.TempPathFactory) -> tuple[Path, StudySummary]:
    """``(folder, summary)`` of study ``name`` run at smoke scale in a fresh folder."""
    out = factory.mktemp(name)
    try:
        return out, run_study(name, "smoke", out)
    except MissingDataError as e:
        pytest.skip(str(e))
