"""One entry point for every figure kind, as used by ``sharpscope plot``: inputs in, figure and data out.

=============  ==========================================  =====================================
kind           inputs                                      figure (drawn from the data alone)
=============  ==========================================  =====================================
``sharpness``  run directories                             :func:`~.trajectory.draw_sharpness`
``trace``      run directories (trace and test accuracy)  :func:`~.trajectory.draw_trace_accuracy`
``escape``     run directories (trace)                     :func:`~.trajectory.draw_escape`
``arms``       run directories of arms × seeds (trace)    :func:`~.arms.draw_arms`
``arms-lambda``  the same, λ_max                            :func:`~.arms.draw_arms` (``quantity``)
``minibatch``  run directories of mini-batch SAM           :func:`~.minibatch.draw_minibatch`
``density``    ``probe --density --json`` / DensityResult  :func:`~.density.draw_density`
               JSON files
``layers``     one ``probe --per-layer --json`` JSON file  :func:`~.layers.layer_curvature_figure`
=============  ==========================================  =====================================

Each run kind is a data function (run directories → plotted numbers) and a drawing function (plotted
numbers → figure); :func:`run_figure` stores the drawing options in the data (``"draw"``), so
:func:`draw_from_data` draws the same figure again from a figure's stored JSON
(``sharpscope plot --from-figure``). The other figures' plotted numbers name their drawing function the same
way (their ``figure`` entry, :data:`OTHER_DRAWERS`): densities, per-layer bars, landscape slices, the
population study's ranking and the ``escape-a3`` and ``escape-a4`` studies' figures.
A folder of run directories (a ``sharpscope reproduce`` study folder) stands for those runs. The run
kinds are one registry (:data:`RUN_KINDS`), which the studies' figures use too.
:func:`cannot_draw` lists, one line each, what a figure's inputs could not give (no edge recorded, fewer
eigenvalues than asked, no test accuracy, ...); ``sharpscope plot`` prints them.

``auto`` (:func:`auto_kind`): files → ``layers`` when they hold per-layer rows and no density, else
``density``; run directories with an RS or SA run →
``escape``; with top eigenvalues recorded → ``sharpness``; with traces only → ``trace``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sharpscope.errors import ConfigError, DataError
from sharpscope.io.jsonsafe import read_json_object
from sharpscope.plots.runs import RunData, as_runs, expand_runs, has_values

if TYPE_CHECKING:
    from matplotlib.figure import Figure

RUN_KINDS: dict[str, tuple[str, str, str, dict[str, Any]]] = {
    # kind: (module of sharpscope.plots, drawing function (from the data alone), data function, drawing options)
    "sharpness": ("trajectory", "draw_sharpness", "sharpness_data", {}),
    "trace": ("trajectory", "draw_trace_accuracy", "trace_accuracy_data", {}),
    "escape": ("trajectory", "draw_escape", "escape_data", {}),
    "arms": ("arms", "draw_arms", "arms_data", {}),
    "arms-lambda": ("arms", "draw_arms", "arms_data", {"quantity": "lambda_max"}),
    "minibatch": ("minibatch", "draw_minibatch", "minibatch_data", {}),
}
# the ``figure`` entry of a kind's data → the kind that draws it
DATA_KINDS = {"sharpness": "sharpness", "trace_accuracy": "trace", "escape": "escape", "arms": "arms",
              "minibatch": "minibatch"}
# the ``figure`` entry of other plotted numbers → (module of sharpscope.plots, drawing function, drawing options)
OTHER_DRAWERS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "density": ("density", "draw_density", {}),
    "layers": ("layers", "layer_curvature_figure", {"log": True}),
    "line": ("landscape", "draw_slice", {}),
    "contour": ("landscape", "draw_slice", {}),
    "surface": ("landscape", "draw_slice", {}),
    "population": ("population", "draw_population", {}),
    "a3-matched": ("escape_a3", "draw_a3", {}),
    "a4-batches": ("escape_a4", "draw_a4", {}),
}
KINDS = ("auto", *RUN_KINDS, "density", "layers")
ESCAPE_OPTIMIZERS = ("rs", "sa")


def auto_kind(inputs: Sequence[str | os.PathLike[str]]) -> str:
    """The figure kind that fits ``inputs`` (see the module docstring)."""
    paths = [Path(p) for p in inputs]
    if not paths:
        raise DataError("nothing to plot: give run directories or density JSON files")
    files = [p.is_file() for p in paths]
    if all(files):
        reports = [read_json_object(p) for p in paths]
        per_layer = all(isinstance(r.get("per_layer"), dict) and r.get("density") is None for r in reports)
        return "layers" if per_layer else "density"
    if any(files):
        raise ConfigError("mix of files and run directories: give run directories, or density JSON files "
                          "(sharpscope probe --density --json) only")
    runs = as_runs(expand_runs(paths))
    return _kind_of_runs(runs)


def cannot_draw(data: dict[str, Any]) -> list[str]:
    """One line for each part of a figure its inputs could not give (``"LABEL: no edge line: ..."``): the
    ``note`` and ``cannot_draw`` entries of the figure data's runs."""
    lines = []
    for item in data.get("runs") or []:
        for text in ([item["note"]] if item.get("note") else []) + list(item.get("cannot_draw") or []):
            lines.append(f"{item.get('label')}: {text}")
    return lines


def layers_data(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The plotted numbers of ``--kind layers``: the probe report's ``per_layer`` entry (grouping, rows of
    ``name``, ``eigenvalues``, ``trace``, ...) with the checkpoint, data and loss it was measured on, and the
    whole network's ``eigenvalues`` and ``trace``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: not a file; --kind layers reads the JSON of sharpscope probe --per-layer --json")
    report = read_json_object(path)
    if not isinstance(report.get("per_layer"), dict):
        raise DataError(f"{path}: no per-layer curvature (run sharpscope probe with --per-layer --json)")
    return {"figure": "layers", "draw": {"log": True}, "source": str(path),
            **{k: report.get(k) for k in ("checkpoint", "data", "loss_fn", "eigenvalues", "trace")},
            "per_layer": report["per_layer"]}


def _kind_of_runs(runs: list[RunData]) -> str:
    if any(r.config.get("optimizer") in ESCAPE_OPTIMIZERS for r in runs) and has_values(runs, "trace.estimate"):
        return "escape"
    if has_values(runs, "eigenvalues.0"):
        return "sharpness"
    if has_values(runs, "trace.estimate"):
        return "trace"
    raise DataError(f"{', '.join(str(r.path) for r in runs)}: no eigenvalues or traces recorded to plot")


def run_figure(kind: str, runs: list[RunData], draw: dict[str, Any] | None = None,
               **options: Any) -> tuple[Figure, dict[str, Any]]:
    """The figure and plotted numbers of the run kind ``kind`` (:data:`RUN_KINDS`) for ``runs``;
    ``options`` (``k``, ``ratio`` for ``sharpness``) go to the data function, ``draw`` (``log`` for
    ``sharpness``) to the drawing function. The data record the drawing options under ``"draw"``, so
    :func:`draw_from_data` draws the same figure from them alone."""
    import importlib

    if kind not in RUN_KINDS:
        raise ConfigError(f"unknown run figure kind {kind!r}; valid: {', '.join(RUN_KINDS)}")
    module, drawer, data_fn, kind_options = RUN_KINDS[kind]
    home = importlib.import_module(f"sharpscope.plots.{module}")
    data = getattr(home, data_fn)(runs, **options)
    data["draw"] = {**kind_options, **(draw or {})}
    return getattr(home, drawer)(data, **data["draw"]), data


def figure_name(data: dict[str, Any]) -> str:
    """The ``figure`` entry of plotted numbers, or what numbers stored without one are: a probe report's
    ``per_layer`` rows are ``layers``, the population ranking's ``tau`` per ``measures`` is ``population``, and
    a rolling ``window`` over ``runs`` is ``minibatch``."""
    name = data.get("figure")
    if name is None and isinstance(data.get("per_layer"), dict):
        name = "layers"
    elif name is None and "tau" in data and "measures" in data:
        name = "population"
    elif name is None and "window" in data and "runs" in data:
        name = "minibatch"
    if name not in DATA_KINDS and name not in OTHER_DRAWERS:
        raise DataError(f"figure data of an unknown kind ({name!r}): valid {', '.join([*DATA_KINDS, *OTHER_DRAWERS])}")
    return str(name)


def draw_from_data(data: dict[str, Any], **draw: Any) -> Figure:
    """The figure of stored plotted numbers ``data`` (non-finite strings decoded; a figure JSON's ``data`` whose
    numbers are its ``plot`` entry stands for them), drawn with the options recorded in them (``data["draw"]``)
    updated by ``draw``."""
    import importlib

    from sharpscope.io.jsonsafe import decode

    data = decode(data)
    if "figure" not in data and isinstance(data.get("plot"), dict):
        data = data["plot"]
    name = figure_name(data)
    if name in DATA_KINDS:
        module, drawer, _, kind_options = RUN_KINDS[DATA_KINDS[name]]
    else:
        module, drawer, kind_options = OTHER_DRAWERS[name]
    options = {**kind_options, **(data.get("draw") or {}), **draw}
    return getattr(importlib.import_module(f"sharpscope.plots.{module}"), drawer)(data, **options)


def make_figure(kind: str, inputs: Sequence[str | os.PathLike[str]], *, labels: Sequence[str] | None = None,
                k: int = 1, ratio: bool = False, log: bool = False) -> tuple[str, Figure, dict[str, Any]]:
    """``(kind, figure, data)`` for ``inputs`` (``kind="auto"`` resolved by :func:`auto_kind`).

    ``k``, ``ratio`` and ``log`` (a logarithmic sharpness axis) apply to ``sharpness`` only; ``layers`` bars use a logarithmic value axis. Raises :class:`ConfigError` for an unknown kind.
    Matplotlib and SciPy are imported here, so importing this module (the CLI does) stays cheap.
    """
    from sharpscope.plots.density import density_data, draw_density, load_density
    from sharpscope.plots.layers import layer_curvature_figure

    if kind not in KINDS:
        raise ConfigError(f"unknown figure kind {kind!r}; valid: {', '.join(KINDS)}")
    if kind == "auto":
        kind = auto_kind(inputs)
    if kind == "density":
        results = [load_density(p) for p in inputs]
        names = labels if labels is not None else [Path(p).stem for p in inputs]
        data = density_data(results, labels=names)
        return kind, draw_density(data), data
    if kind == "layers":
        if len(inputs) != 1:
            raise ConfigError(f"--kind layers plots one probe JSON file, got {len(inputs)} inputs")
        data = layers_data(inputs[0])
        return kind, layer_curvature_figure(data, **data["draw"]), data
    runs = as_runs(expand_runs(inputs), labels)
    options: dict[str, Any] = {"k": k, "ratio": ratio} if kind == "sharpness" else {}
    return (kind, *run_figure(kind, runs, draw={"log": log} if kind == "sharpness" else None, **options))
