"""``sharpscope reproduce STUDY --scale cpu --out runs/STUDY [--figures figures/]``: run a study (thin layer)."""

from __future__ import annotations

import json
import shlex
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from sharpscope_cli._common import DATA_ROOT_HELP, EXIT_DIVERGED, STUDY_NAMES, Scale, err, use_data_root

if TYPE_CHECKING:
    from sharpscope.io.records import RunSummary


def _stage_line(stage: str, s: RunSummary) -> None:
    final = s.final_measurement
    acc = None if final is None else final.test_acc if "test_acc" in final.keys else final.train_acc
    note = f", acc {acc:.1%}" if isinstance(acc, (int, float)) else ""
    err.print(f"{stage}: {s.status} at step {s.step}{note}", highlight=False)


def reproduce_cmd(
    study: Annotated[str, typer.Argument(help=f"Study: {', '.join(STUDY_NAMES)}.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Study folder: one run directory per stage, data/, STUDY-summary.json. Rerunning resumes.")],
    scale: Annotated[Scale, typer.Option(help="smoke: seconds (plumbing); cpu: minutes on a CPU; gpu: the paper's setting.")] = Scale.smoke,
    figures: Annotated[Path | None, typer.Option("--figures", help="Write the study's figures (PNG, PDF, JSON) and summary here.")] = None,
    only: Annotated[list[str] | None, typer.Option("--only", help="Run only this stage (and the stages it starts from). Repeatable.")] = None,
    option: Annotated[list[str] | None, typer.Option("--option", help="A study option KEY=VALUE, e.g. construction=clean+confusion for escape and label-noise. Repeatable.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the study summary as one JSON object.")] = False,
    data_root: Annotated[Path | None, typer.Option("--data-root", help=DATA_ROOT_HELP)] = None,
) -> None:
    """Run a reproduction study (several dependent training runs), check its claims, draw its figures.

    Before the first stage it prints (stderr), per claim compared over seeds, the smallest effect the planned
    seeds can detect under the stated noise assumption.

    Exit code 3 when one of its runs diverged (named on stderr), as for ``train``. A data file the study
    can do without but lacks is named on stderr with what the study does instead (also in its summary).
    """
    from sharpscope.data.root import DataFallbackWarning
    from sharpscope.experiments import parse_overrides
    from sharpscope.experiments.studies import STUDIES, run_study
    from sharpscope.experiments.studies.framework import data_fallbacks

    use_data_root(data_root)
    if study in STUDIES:  # each fallback as one line here; the library's warning of it would repeat it
        for note in data_fallbacks(STUDIES[study], scale.value):
            err.print(f"note: {note}", highlight=False, soft_wrap=True)
        warnings.filterwarnings("ignore", category=DataFallbackWarning)
    options = parse_overrides(option or [])
    summary = run_study(study, scale.value, out_dir, only=only or None,
                        progress=None if as_json else _stage_line, options=options or None,
                        notice=lambda line: err.print(line, highlight=False, soft_wrap=True))
    if figures is not None:
        from sharpscope.experiments.figures import study_figures

        command = shlex.join(["sharpscope", *sys.argv[1:]]) if sys.argv[1:2] == ["reproduce"] else \
            f"sharpscope reproduce {study} --scale {scale.value} --out {out_dir} --figures {figures}"
        for path in study_figures(study, out_dir, figures, command=command):
            err.print(f"wrote {path}", highlight=False)
    from sharpscope.io.jsonsafe import to_jsonable

    if as_json:
        sys.stdout.write(json.dumps(summary.to_json()) + "\n")
    else:
        typer.echo(json.dumps(to_jsonable(summary.results), indent=1, default=str))
    diverged = summary.diverged
    if diverged:
        err.print(f"diverged: {', '.join(diverged)} (non-finite training loss; the study's numbers above do not "
                  "stand for those runs)", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_DIVERGED)
