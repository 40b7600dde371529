"""Every notebook runs top to bottom at smoke scale, and is committed with its outputs stripped.

Each notebook is executed by nbclient in a fresh ``python3`` kernel whose working directory is a
temporary folder, with ``SHARPSCOPE_NOTEBOOK_SCALE=smoke``; it must write only under that folder and
print no warning.
To strip outputs after running a notebook by hand, see ``notebooks/README.md``.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
REQUIRED = ("01_probe_a_checkpoint", "02_edge_of_stability", "03_escaping_sharp_minima")
#: How Python prints a warning: ``path:line: SomeWarning: message`` (progress lines on stderr pass).
WARNING = re.compile(r"\b\w*Warning: ")


def printed(nb: nbformat.NotebookNode, stream: str) -> list[str]:
    """Everything the executed notebook's code cells wrote to ``stream`` ("stdout" or "stderr")."""
    return [out.text for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
            if out.output_type == "stream" and out.name == stream]


def test_the_notebooks_are_there() -> None:
    assert set(REQUIRED) <= {p.stem for p in NOTEBOOKS}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_valid_and_stripped(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code, f"{path.name} has no code cells"
    for i, cell in enumerate(code):
        assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: code cell {i} keeps its outputs"
    assert 'SHARPSCOPE_NOTEBOOK_SCALE' in code[0].source, f"{path.name}: the first code cell must read the scale"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_at_smoke_scale(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHARPSCOPE_NOTEBOOK_SCALE", "smoke")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # smoke-scale models: threads only compete on a shared machine
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
              if out.output_type == "error"]
    assert not errors
    warned = [line for text in printed(nb, "stderr") for line in text.splitlines() if WARNING.search(line)]
    assert not warned, f"{path.name} printed warnings: {warned[:3]}"
    assert any(tmp_path.iterdir()), f"{path.name} wrote nothing under its working directory"
