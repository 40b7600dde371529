"""A study run at smoke scale once per test module; skipped (naming the file) when the data root lacks a file
the study cannot do without."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sharpscope.data import MissingDataError
from sharpscope.experiments.studies import run_study
from sharpscope.io.studysummary import StudySummary


def run_smoke_study(name: str, factory: pytest.TempPathFactory) -> tuple[Path, StudySummary]:
    """``(folder, summary)`` of study ``name`` run at smoke scale in a fresh folder, on one torch thread as the
    tests that read its runs again (so a reading recomputed in a test equals the study's to the last bit)."""
    out = factory.mktemp(name)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return out, run_study(name, "smoke", out)
    except MissingDataError as e:
        pytest.skip(str(e))
    finally:
        torch.set_num_threads(before)
