"""The figures of a study, drawn from its run directories with :mod:`sharpscope.plots`, or again from the
plotted numbers stored beside a figure.

Each :class:`~sharpscope.experiments.studies.Figure` of a study becomes ``<fig_dir>/<study>-<stem>``
``.png``/``.pdf``/``.json``; the JSON holds the plotted numbers, the study's criteria results and
each plotted run's ``summary.json``, the command, and a caption that names the scale and device.
The study's summary (``<out_dir>/<study>-summary.json``) is copied to ``<fig_dir>``.

:func:`redraw_figure` draws a committed figure again from its JSON alone (the run directories are not
needed): ``sharpscope plot --from-figure figures/escape-a3.json``. A study figure is drawn by the same
drawing function and options as :func:`study_figures` uses, with the study's current caption; numbers that
figure data stored by an older version lack are rebuilt from what the JSON holds (:func:`upgrade_plot`).
"""

from __future__ import annotations

import re
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from sharpscope.errors import ConfigError
from sharpscope.experiments.studies import STUDIES, summary_path
from sharpscope.experiments.studies.framework import Figure
from sharpscope.io import jsonsafe
from sharpscope.io.atomic import atomic_write_bytes
from sharpscope.io.records import RunSummary
from sharpscope.io.studysummary import read_study_summary
from sharpscope.plots.kinds import RUN_KINDS, draw_from_data, run_figure
from sharpscope.plots.runs import load_run
from sharpscope.plots.save import figure_paths, load_figure_data, save_figure

_TAIL = re.compile(r"(Each run is one seed \(\d+\)\.|Seeds [\d, ]+ \(\d+ in all\)\.) (Scale '.*)$")


def device_note(scale: str, runs: list[Any] | None = None) -> str:
    """The caption's statement of the scale and of the devices the plotted runs measured on (from their
    records' settings)."""
    devices = sorted({str((m.settings or {}).get("device", "?")) for r in runs or [] for m in r.measurements})
    where = ", ".join(d.upper() if d == "cpu" else d for d in devices) or "an unrecorded device"
    small = "" if scale == "gpu" else ", a small version of the paper's experiment"
    return f"Scale '{scale}'{small}; measured on {where}."


def seeds_note(runs: list[Any]) -> str:
    """The caption's statement of the seeds behind the plotted runs."""
    seeds = sorted({int(r.config.get("seed", 0)) for r in runs})
    return (f"Each run is one seed ({seeds[0]})." if len(seeds) == 1 else
            f"Seeds {', '.join(map(str, seeds))} ({len(seeds)} in all).")


def figure_facts(kind: str, plot: dict[str, Any]) -> str:
    """The numbers a figure's caption states from its plotted data: the matched-loss readout of an arms figure,
    the rolling λ/edge of a mini-batch figure; empty for other kinds."""
    from sharpscope.io.jsonsafe import decode
    from sharpscope.plots.arms import matched_loss_facts
    from sharpscope.plots.minibatch import minibatch_facts

    if kind.startswith("arms"):
        return matched_loss_facts(decode(plot), "lambda_max" if kind == "arms-lambda" else "trace")
    if kind == "minibatch":
        return minibatch_facts(decode(plot))
    return ""


def _caption(spec: Figure, plot: dict[str, Any], seeds: str, scale: str) -> str:
    """A study figure's caption: the spec's text, the numbers of :func:`figure_facts` and of the spec's own
    ``facts``, the seeds and the scale."""
    from sharpscope.io.jsonsafe import decode

    own = spec.facts(decode(plot)) if spec.facts is not None else ""
    return " ".join(part for part in (spec.caption, figure_facts(spec.kind, plot), own, seeds, scale) if part)


def _draw_options(spec: Figure) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(data options, drawing options)`` of a study figure."""
    if spec.kind == "sharpness":
        return {"k": spec.k}, {"log": spec.log}
    return {}, {}


def study_figures(name: str, out_dir: str | Path, fig_dir: str | Path, *, command: str) -> list[Path]:
    """Draw every figure of study ``name`` with a finished stage in ``out_dir``; return the files written."""
    out, figs = Path(out_dir), Path(fig_dir)
    summary = read_study_summary(summary_path(name, out))
    written: list[Path] = []
    finished = [s for s in summary.stages if (out / s / "summary.json").is_file()]
    for spec in STUDIES[name].figures:
        stages = [s for pattern in spec.stages for s in finished if fnmatch(s, pattern)]
        if not stages:
            continue
        runs = [load_run(out / s, label=s) for s in dict.fromkeys(stages)]
        options, draw = _draw_options(spec)
        fig, plotted = run_figure(spec.kind, runs, draw=draw, **options)
        data = {"plot": plotted, "results": {r.label: summary.results.get(r.label) for r in runs},
                "run_summaries": {r.label: None if r.summary is None else r.summary.to_json() for r in runs}}
        caption = _caption(spec, plotted, seeds_note(runs), device_note(summary.scale, runs))
        written += save_figure(fig, figs / f"{name}-{spec.stem}", data=data, command=command, caption=caption)
    draw_fn = STUDIES[name].draw
    if draw_fn is not None:
        for stem, fig, plotted, caption in draw_fn(summary):
            written += save_figure(fig, figs / f"{name}-{stem}", data={"plot": plotted}, command=command,
                                   caption=caption)
    target = figs / f"{name}-summary.json"
    written.append(atomic_write_bytes(target, summary.to_text().encode()))
    return written


def study_figure_of(path: str | Path) -> tuple[str, Figure] | None:
    """``(study, figure spec)`` of a file named ``<study>-<stem>.json`` after a study's run figure, else None."""
    name = figure_paths(path)[2].stem
    for study, spec in ((s, f) for s, st in STUDIES.items() for f in st.figures):
        if name == f"{study}-{spec.stem}":
            return study, spec
    return None


def upgrade_plot(plot: dict[str, Any], run_summaries: dict[str, Any]) -> dict[str, Any]:
    """Plotted numbers of a study figure with what older versions did not store, rebuilt from the figure's
    own JSON: each arm's or run's ``test_examples`` from its runs' summaries (``data.test.examples``), and a
    mini-batch run's ``edge_full`` (the edge from the probe set's gradient norm, which the criterion reads)
    from the stored probe gradient norms with :func:`sharpscope.thresholds.sam_edge` and the run's η, ρ
    (its summary's thresholds) and β (the edge named (2+2β)/η, or the run's stage prefix ``mb-mom``)."""
    from sharpscope.thresholds import sam_edge

    summaries = {label: RunSummary.from_json(s) for label, s in run_summaries.items() if s}

    def examples(label: str) -> int | None:
        return summaries[label].test_examples if label in summaries else None

    for item in plot.get("arms") or []:
        item.setdefault("test_examples", next((n for n in map(examples, item["runs"]) if n), None))
    for item in plot.get("runs") or []:
        if "lambda_full" in item and item.get("edge_batch") is not None and item.get("edge_full") is None:
            final = summaries[item["label"]].final_measurement if item["label"] in summaries else None
            thresholds = (None if final is None else final.thresholds) or {}
            beta = 0.9 if item["label"].startswith("mb-mom") else 0.0
            item["edge_full"] = [sam_edge(thresholds["lr"], thresholds.get("rho", 0.0), g, beta)
                                 for g in map(jsonsafe.as_float, item["grad_norm_full"])]
            item["edge_name"] = "SAM-edge" if thresholds.get("rho") else ("(2+2β)/η" if beta else "2/η")
            item.pop("ratios", None)
        elif "test_acc" in item:
            item.setdefault("test_examples", examples(item["label"]))
    return plot


def figure_from_json(path: str | Path) -> tuple[Any, dict[str, Any], str | None]:
    """``(figure, data, caption)`` of the figure stored in ``path`` (a figure's ``.json``), drawn again from its
    plotted numbers: a study figure with its study's drawing options and current caption (the stored seed and
    scale sentences kept), its numbers completed by :func:`upgrade_plot`; another figure as stored."""
    stored = load_figure_data(path)
    data = stored.get("data")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: no plotted numbers to draw from")
    found = study_figure_of(path)
    caption = stored.get("caption")
    if found is None or not isinstance(data.get("plot"), dict):
        return draw_from_data(data), data, caption
    _, spec = found
    plot = upgrade_plot(data["plot"], data.get("run_summaries") or {})
    plot["draw"] = draw = {**RUN_KINDS[spec.kind][3], **(plot.get("draw") or {}), **_draw_options(spec)[1]}
    tail = _TAIL.search(caption or "")
    caption = _caption(spec, plot, *(tail.groups() if tail else ("", "")))
    return draw_from_data(plot, **draw), {**data, "plot": plot}, caption


def redraw_figure(path: str | Path, out_stem: str | Path | None = None) -> list[Path]:
    """Draw the figure stored in ``path`` again (:func:`figure_from_json`) and save it to ``out_stem`` (default:
    in place), keeping its command."""
    fig, data, caption = figure_from_json(path)
    target = out_stem if out_stem is not None else figure_paths(path)[0].with_suffix("")
    return save_figure(fig, target, data=data, command=load_figure_data(path).get("command"), caption=caption)
