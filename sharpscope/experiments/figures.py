"""The figures of a study, drawn from its run directories with :mod:`sharpscope.plots`.

Each :class:`~sharpscope.experiments.studies.Figure` of a study becomes ``<fig_dir>/<study>-<stem>``
``.png``/``.pdf``/``.json``; the JSON holds the plotted numbers, the study's criteria results and
each plotted run's ``summary.json``, the command, and a caption that names the scale and device.
The study's summary (``<out_dir>/<study>-summary.json``) is copied to ``<fig_dir>``.
"""

from __future__ import annotations

from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from sharpscope.experiments.studies import STUDIES, summary_path
from sharpscope.io import jsonsafe
from sharpscope.io.atomic import atomic_write_bytes
from sharpscope.plots.kinds import run_figure
from sharpscope.plots.runs import load_run
from sharpscope.plots.save import save_figure


def device_note(scale: str, runs: list[Any] | None = None) -> str:
    """The caption's statement of the scale and of the devices the plotted runs measured on (from their
    records' settings)."""
    devices = sorted({str((m.get("settings") or {}).get("device", "?")) for r in runs or [] for m in r.measurements})
    where = ", ".join(d.upper() if d == "cpu" else d for d in devices) or "an unrecorded device"
    small = "" if scale == "gpu" else ", a small version of the paper's experiment"
    return f"Scale '{scale}'{small}; measured on {where}."


def seeds_note(runs: list[Any]) -> str:
    """The caption's statement of the seeds behind the plotted runs."""
    seeds = sorted({int(r.config.get("seed", 0)) for r in runs})
    return (f"Each run is one seed ({seeds[0]})." if len(seeds) == 1 else
            f"Seeds {', '.join(map(str, seeds))} ({len(seeds)} in all).")


def study_figures(name: str, out_dir: str | Path, fig_dir: str | Path, *, command: str) -> list[Path]:
    """Draw every figure of study ``name`` with a finished stage in ``out_dir``; return the files written."""
    out, figs = Path(out_dir), Path(fig_dir)
    summary = jsonsafe.loads(summary_path(name, out).read_text(encoding="utf-8"))
    written: list[Path] = []
    finished = [s for s in summary["stages"] if (out / s / "summary.json").is_file()]
    for spec in STUDIES[name].figures:
        stages = [s for pattern in spec.stages for s in finished if fnmatch(s, pattern)]
        if not stages:
            continue
        runs = [load_run(out / s, label=s) for s in dict.fromkeys(stages)]
        options: dict[str, Any] = {"k": spec.k} if spec.kind == "sharpness" else {}
        fig, plotted = run_figure(spec.kind, runs, **options)
        data = {"plot": plotted, "results": {r.label: summary["results"].get(r.label) for r in runs},
                "run_summaries": {r.label: r.summary for r in runs}}
        caption = f"{spec.caption} {seeds_note(runs)} {device_note(summary['scale'], runs)}"
        written += save_figure(fig, figs / f"{name}-{spec.stem}", data=data, command=command, caption=caption)
    draw = STUDIES[name].draw
    if draw is not None:
        for stem, fig, plotted, caption in draw(summary):
            written += save_figure(fig, figs / f"{name}-{stem}", data={"plot": plotted}, command=command,
                                   caption=caption)
    target = figs / f"{name}-summary.json"
    written.append(atomic_write_bytes(target, (jsonsafe.dumps(summary, indent=2) + "\n").encode()))
    return written
