"""``sharpscope train RECIPE --out DIR``: run an experiment recipe into a run directory (thin layer)."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from sharpscope_cli._common import DATA_ROOT_HELP, EXIT_DIVERGED, RECIPE_NAMES, Scale, err, progress, use_data_root

if TYPE_CHECKING:
    from sharpscope.io.records import Measurement, RunSummary


def step_info(record: Measurement | None) -> str:
    """The last measured sharpness against its edge, for the progress display (empty before the first)."""
    from sharpscope.track.thresholds import bounded_sharpness

    if record is None:
        return ""
    name, lam = bounded_sharpness(record)
    edge = record.edge
    return f"{name} {_num(lam, '.4g')}" + (f" / edge {edge:.4g}" if isinstance(edge, (int, float)) else "")


def step_progress(update: Callable[..., None] | None) -> Callable[[int, int, Measurement | None], None] | None:
    """The runner's ``progress(step, total, record)`` shown on the common display as stage "training"."""
    if update is None:
        return None
    return lambda step, total, record: update("training", step, total, step_info(record))


def _num(value: Any, fmt: str) -> str:
    """``value`` formatted when it is a finite number; as stored otherwise (``"NaN"``, ``"Infinity"``, None)."""
    from sharpscope.io.jsonsafe import to_jsonable

    finite = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return format(value, fmt) if finite else str(to_jsonable(value))


def summary_line(s: RunSummary) -> str:
    """One line: status, step, final sharpness against its threshold, losses, cost, where."""
    from sharpscope.track.thresholds import bounded_sharpness

    final = s.final_measurement
    parts = [f"{s.recipe or 'run'} ({s.scale or 'custom'}): {s.status} at step {s.step}/{s.steps_requested}"]
    if final is not None and final.eigenvalues:
        name, value = bounded_sharpness(final)
        edge = f" vs {final.threshold_rule} {_num(final.edge, '.4g')}" if final.threshold_rule else ""
        parts.append(f"{name} {_num(value, '.4g')}{edge}")
    if final is not None and final.train_loss is not None:
        parts.append(f"train loss {_num(final.train_loss, '.4g')} acc {_num(final.train_acc, '.1%')}")
    if final is not None and final.test_acc is not None:
        parts.append(f"test acc {_num(final.test_acc, '.1%')}")
    if s.diverged_at_step is not None:
        parts.append(f"non-finite loss at step {s.diverged_at_step}")
    parts.append(f"{s.measurements} measurements, {s.hvps_total} HVPs")
    if s.already_complete:
        parts.append("already complete")
    elif s.resumed_from_step is not None:
        parts.append(f"resumed from step {s.resumed_from_step}")
    return "; ".join(parts) + f" -> {s.run_dir}"


def train_cmd(
    recipe: Annotated[str, typer.Argument(help=f"Experiment recipe: {', '.join(RECIPE_NAMES)}.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Run directory (config.json, metrics.jsonl, checkpoints/, summary.json). Rerunning the same command resumes a killed run.")],
    scale: Annotated[Scale, typer.Option(help="smoke: seconds (plumbing); cpu: minutes on a CPU; gpu: the paper's setting.")] = Scale.smoke,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing run directory (deletes its run files).")] = False,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a config field, KEY=VALUE (JSON when it parses; dotted keys reach into dicts, e.g. optimizer_kwargs.lr=0.02). Repeatable.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as one JSON object instead of one line.")] = False,
    log: Annotated[list[str] | None, typer.Option("--log", help="Also send the records to tensorboard:DIR, csv:PATH or wandb:PROJECT (repeatable; extras tensorboard, wandb). A resumed run adds each step once.")] = None,
    data_root: Annotated[Path | None, typer.Option("--data-root", help=DATA_ROOT_HELP)] = None,
) -> None:
    """Run an experiment recipe (training with sharpness tracking) into a run directory.

    Exit codes: 0 completed (or stopped at its accuracy goal), 1 error, 3 the training loss became
    non-finite (status "diverged" in summary.json), 130 interrupted, 143 terminated (SIGTERM). A killed,
    interrupted or terminated run resumes when the same command is run again.
    """
    from sharpscope.experiments import get_recipe, parse_overrides
    from sharpscope.parallel import init_distributed, rank, resolve_device
    from sharpscope.track import train

    use_data_root(data_root)
    overrides = parse_overrides(set_ or [])
    if log:
        overrides["log"] = list(log)
    cfg = get_recipe(recipe, scale.value, overrides)
    init_distributed(resolve_device(cfg.device))  # under torchrun: data parallel, rank 0 writes and prints
    with progress(unit="steps", bar=rank() == 0 and not as_json and err.is_terminal) as update:
        summary = train(cfg, out_dir, force=force, progress=step_progress(update))
    if rank() != 0:
        return
    if not summary.already_complete:
        for note in summary.notes:
            err.print(f"note: {note}", highlight=False, soft_wrap=True)
    if as_json:
        sys.stdout.write(json.dumps(summary.to_json()) + "\n")
    else:
        typer.echo(summary_line(summary))
    if summary.status == "diverged":
        raise typer.Exit(EXIT_DIVERGED)
