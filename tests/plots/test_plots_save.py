"""save_figure: PNG and PDF files, strict JSON with the data and the command, nothing half-written."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from sharpscope.errors import ConfigError
from sharpscope.plots.save import figure_paths, load_figure_data, save_figure


def _figure() -> Figure:
    fig = Figure(figsize=(2, 1.5))
    fig.add_subplot().plot([0, 1, 2], [1.0, math.nan, 3.0])
    return fig


def test_png_pdf_and_json_round_trip(tmp_path: Path) -> None:
    data = {"steps": np.array([0, 5]), "lam": np.array([1.5, math.nan]), "edge": torch.tensor([math.inf]),
            "label": "gd"}
    paths = save_figure(_figure(), tmp_path / "new" / "fig", data=data, command=["sharpscope", "plot", "a b"],
                        caption="λ_max against 2/η")
    png, pdf, js = paths
    assert [p.name for p in paths] == ["fig.png", "fig.pdf", "fig.json"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert pdf.read_bytes()[:5] == b"%PDF-"
    text = js.read_text(encoding="utf-8")
    stored = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard token {c}"))
    assert stored == {"caption": "λ_max against 2/η", "command": "sharpscope plot 'a b'",
                      "data": {"steps": [0, 5], "lam": [1.5, "NaN"], "edge": ["Infinity"], "label": "gd"}}
    assert load_figure_data(tmp_path / "new" / "fig") == stored == load_figure_data(js)
    assert not list((tmp_path / "new").glob(".*.tmp"))


def test_pdf_bytes_do_not_depend_on_the_time(tmp_path: Path) -> None:
    a = save_figure(_figure(), tmp_path / "a", data={})[1].read_bytes()
    b = save_figure(_figure(), tmp_path / "b", data={})[1].read_bytes()
    assert a == b


def test_stem_suffix_and_bad_input(tmp_path: Path) -> None:
    assert figure_paths(tmp_path / "x.png") == figure_paths(tmp_path / "x")
    assert figure_paths("out/eos.v2")[0] == Path("out/eos.v2.png")
    with pytest.raises(ConfigError, match="cannot be stored as JSON"):
        save_figure(_figure(), tmp_path / "bad", data={"f": object()})
    assert list(tmp_path.iterdir()) == []  # nothing written before the data was checked
    with pytest.raises(ConfigError, match="no such figure data file"):
        load_figure_data(tmp_path / "missing")
