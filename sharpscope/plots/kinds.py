"""One entry point for every figure kind, as used by ``sharpscope plot``: inputs in, figure and data out.

=============  ==========================================  =====================================
kind           inputs                                      figure
=============  ==========================================  =====================================
``sharpness``  run directories                             :func:`~.trajectory.sharpness_figure`
``trace``      run directories (trace and test accuracy)  :func:`~.trajectory.trace_accuracy_figure`
``escape``     run directories (trace)                     :func:`~.trajectory.escape_figure`
``density``    ``probe --density --json`` / DensityResult  :func:`~.density.density_figure`
               JSON files
=============  ==========================================  =====================================

``auto`` (:func:`auto_kind`): files → ``density``; run directories with an RS or SA run →
``escape``; with top eigenvalues recorded → ``sharpness``; with traces only → ``trace``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from typing import TYPE_CHECKING

from sharpscope.errors import ConfigError, DataError
from sharpscope.plots.runs import RunData, as_runs, has_values

if TYPE_CHECKING:
    from matplotlib.figure import Figure

KINDS = ("auto", "sharpness", "trace", "escape", "density")
ESCAPE_OPTIMIZERS = ("rs", "sa")


def auto_kind(inputs: Sequence[str | os.PathLike[str]]) -> str:
    """The figure kind that fits ``inputs`` (see the module docstring)."""
    paths = [Path(p) for p in inputs]
    if not paths:
        raise DataError("nothing to plot: give run directories or density JSON files")
    files = [p.is_file() for p in paths]
    if all(files):
        return "density"
    if any(files):
        raise ConfigError("mix of files and run directories: give run directories, or density JSON files "
                          "(sharpscope probe --density --json) only")
    runs = as_runs(paths)
    return _kind_of_runs(runs)


def _kind_of_runs(runs: list[RunData]) -> str:
    if any(r.config.get("optimizer") in ESCAPE_OPTIMIZERS for r in runs) and has_values(runs, "trace.estimate"):
        return "escape"
    if has_values(runs, "eigenvalues.0"):
        return "sharpness"
    if has_values(runs, "trace.estimate"):
        return "trace"
    raise DataError(f"{', '.join(str(r.path) for r in runs)}: no eigenvalues or traces recorded to plot")


def make_figure(kind: str, inputs: Sequence[str | os.PathLike[str]], *, labels: Sequence[str] | None = None,
                k: int = 1, ratio: bool = False) -> tuple[str, Figure, dict[str, Any]]:
    """``(kind, figure, data)`` for ``inputs`` (``kind="auto"`` resolved by :func:`auto_kind`).

    ``k`` and ``ratio`` apply to ``sharpness`` only. Raises :class:`ConfigError` for an unknown kind.
    Matplotlib and SciPy are imported here, so importing this module (the CLI does) stays cheap.
    """
    from sharpscope.plots.density import density_data, density_figure, load_density
    from sharpscope.plots.trajectory import (
        escape_data, escape_figure, sharpness_data, sharpness_figure, trace_accuracy_data, trace_accuracy_figure,
    )

    if kind not in KINDS:
        raise ConfigError(f"unknown figure kind {kind!r}; valid: {', '.join(KINDS)}")
    if kind == "auto":
        kind = auto_kind(inputs)
    if kind == "density":
        results = [load_density(p) for p in inputs]
        names = labels if labels is not None else [Path(p).stem for p in inputs]
        return kind, density_figure(results, labels=names), density_data(results, labels=names)
    runs = as_runs(list(inputs), labels)
    if kind == "sharpness":
        return kind, sharpness_figure(runs, k=k, ratio=ratio), sharpness_data(runs, k=k, ratio=ratio)
    if kind == "trace":
        return kind, trace_accuracy_figure(runs), trace_accuracy_data(runs)
    return kind, escape_figure(runs), escape_data(runs)
