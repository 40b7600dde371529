"""Write a figure as PNG and PDF with the plotted data beside it as JSON.

``save_figure(fig, "figures/eos", data=...)`` writes ``figures/eos.png`` (150 dpi),
``figures/eos.pdf`` and ``figures/eos.json`` = ``{"caption": ..., "command": ..., "data": ...}``,
each atomically (temporary file, fsync, rename), creating the folder. The JSON is strict: NaN and
infinities are stored as the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"`` as in run
directories (:mod:`sharpscope.io.jsonsafe`), and arrays as lists. PDFs carry no creation date,
so saving the same figure twice gives the same bytes.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from sharpscope.errors import ConfigError
from sharpscope.io import atomic_write, atomic_write_bytes, jsonsafe
from sharpscope.io.atomic import check_target

DPI = 150


def figure_paths(stem: str | os.PathLike[str]) -> tuple[Path, Path, Path]:
    """``(stem.png, stem.pdf, stem.json)``; a stem given as ``eos.png``/``.pdf``/``.json`` means ``eos``."""
    stem = Path(stem)
    if stem.suffix in (".png", ".pdf", ".json"):
        stem = stem.with_suffix("")
    if not stem.name:
        raise ConfigError(f"figure stem {str(stem)!r} names no file")
    return tuple(stem.with_name(f"{stem.name}.{ext}") for ext in ("png", "pdf", "json"))  # type: ignore[return-value]


def save_figure(fig: Figure, stem: str | os.PathLike[str], *, data: Any,
                command: str | Sequence[str] | None = None, caption: str | None = None) -> list[Path]:
    """Write ``stem.png``, ``stem.pdf`` and ``stem.json`` (see the module docstring); return the paths.

    Each file is checked first (:func:`~sharpscope.io.atomic.check_target`: a named pipe or device
    is refused before anything is written). ``command`` (a string, or an argument list joined with shell quoting) records how the figure
    was made. ``data`` must be JSON-able after tensor/array conversion, else
    :class:`~sharpscope.errors.ConfigError` is raised before any file is written.
    """
    png, pdf, js = figure_paths(stem)
    if command is not None and not isinstance(command, str):
        command = shlex.join(str(c) for c in command)
    try:
        text = jsonsafe.dumps({"caption": caption, "command": command, "data": data}) + "\n"
    except TypeError as e:
        raise ConfigError(f"figure data for {js} cannot be stored as JSON: {e}") from None
    for path in (png, pdf, js):  # all three checked before the first is written
        check_target(path, "figure")
    atomic_write(png, lambda f: fig.savefig(f, format="png", dpi=DPI))
    atomic_write(pdf, lambda f: fig.savefig(f, format="pdf", metadata={"CreationDate": None}))
    atomic_write_bytes(js, text.encode())
    return [png, pdf, js]


def load_figure_data(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``{"caption", "command", "data"}`` object of a ``stem.json`` (or of ``stem``) as stored."""
    path = figure_paths(path)[2]
    try:
        return jsonsafe.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such figure data file") from None
    except ValueError as e:
        raise ConfigError(f"{path} is not a figure data file ({e})") from None
