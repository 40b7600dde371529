"""``sharpscope plot RUN [RUN...] --out STEM``: a figure from run directories, density or per-layer probe JSON;
``sharpscope plot --from-figure FIGURE.json [--out STEM]``: a figure drawn again from its stored numbers
(thin layer)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import typer
from sharpscope_cli._common import PLOT_KINDS, err


def plot_cmd(
    inputs: Annotated[list[Path] | None, typer.Argument(metavar="[RUN...]", show_default=False, help="Run directories (sharpscope train's, a SharpnessTracker's RunDirectory/JSONLSink folder, or a study folder of runs); for --kind density, JSON files written by `sharpscope probe --density --json` (or a DensityResult's to_dict()); for --kind layers, one JSON file written by `sharpscope probe --per-layer --json`.")] = None,
    out_stem: Annotated[Path | None, typer.Option("--out", help="Writes STEM.png (150 dpi), STEM.pdf and STEM.json (the plotted data and this command); required except with --from-figure (default there: the figure itself).")] = None,
    kind: Annotated[str, typer.Option(help=f"{', '.join(PLOT_KINDS)}. auto: layers for probe JSON with per-layer rows, density for other files; escape when a run uses RS/SA; sharpness when eigenvalues are recorded; else trace.")] = "auto",
    labels: Annotated[str | None, typer.Option(help="Comma-separated labels, one per input (default: folder or file names).")] = None,
    ratio: Annotated[bool, typer.Option("--ratio", help="sharpness: plot λ/edge with the band [0.8, 1.25].")] = False,
    k: Annotated[int, typer.Option(help="sharpness: plot λ_1..λ_k (as far as recorded).")] = 1,
    caption: Annotated[str | None, typer.Option(help="Caption stored in STEM.json.")] = None,
    log: Annotated[bool, typer.Option("--log", help="sharpness: a logarithmic sharpness axis.")] = False,
    from_figure: Annotated[Path | None, typer.Option("--from-figure", help="Draw this figure again from the plotted numbers in its JSON (no run directories needed); a study figure gets its study's current caption and drawing options, and keeps its command.")] = None,
) -> None:
    """Plot sharpness against its thresholds, trace against test accuracy, escape curves, a spectral density or
    per-layer curvature bars. What the inputs cannot give (no edge recorded, fewer eigenvalues than --k, ...)
    is named in one note line each on stderr."""
    from sharpscope.errors import ConfigError
    from sharpscope.plots.kinds import cannot_draw, make_figure
    from sharpscope.plots.save import save_figure  # matplotlib: imported only when plotting

    if from_figure is not None:
        if inputs:
            raise ConfigError("--from-figure draws from one figure's JSON: give no RUN inputs with it")
        from sharpscope.experiments.figures import redraw_figure

        paths = redraw_figure(from_figure, out_stem)
        typer.echo(f"figure drawn again from {from_figure}: {', '.join(str(p) for p in paths)}")
        return
    if not inputs or out_stem is None:
        raise ConfigError("give RUN inputs and --out STEM (or --from-figure FIGURE.json)")
    names = None
    if labels is not None:
        names = [s.strip() for s in labels.split(",")]
        if len(names) != len(inputs):
            raise ConfigError(f"--labels gives {len(names)} label(s) for {len(inputs)} input(s)")
    chosen, fig, data = make_figure(kind, inputs, labels=names, k=k, ratio=ratio, log=log)
    command = ["sharpscope", "plot", *map(str, inputs), "--kind", kind, "--out", str(out_stem)]
    if labels is not None:
        command += ["--labels", labels]
    if ratio:
        command.append("--ratio")
    if k != 1:
        command += ["--k", str(k)]
    if log:
        command.append("--log")
    paths = save_figure(fig, out_stem, data=data, command=shlex.join(command), caption=caption)
    typer.echo(f"{chosen} figure of {len(inputs)} input(s): {', '.join(str(p) for p in paths)}")
    for line in cannot_draw(data):
        err.print(f"note: {line}", highlight=False, markup=False, soft_wrap=True)
