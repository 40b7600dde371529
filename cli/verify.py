"""``sharpscope verify RUN``: check a run directory's records and checkpoints against their checksums (thin layer)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def verify_cmd(
    run: Annotated[Path, typer.Argument(metavar="RUN", help="Run directory (written by `sharpscope train` or a RunDirectory).")],
) -> None:
    """Verify a run directory: every record of metrics.jsonl against its checksum, the finished run's files
    against SHA256SUMS, every checkpoint against checkpoints/SHA256SUMS. Changes nothing.

    Exit codes: 0 intact (one line), 1 damaged (one line per problem on stdout) or not a run directory
    (one line on stderr). Rerunning the run's train command repairs what it can by replaying.
    """
    from sharpscope.io.rundir import RunDirectory

    result = RunDirectory(run).verify()
    for problem in result.problems:
        typer.echo(problem)
    if result.problems:
        raise typer.Exit(1)
    unverified = (f"; {result.unverified} record(s) written before records carried checksums could not be verified"
                  if result.unverified else "")
    typer.echo(f"{run}: intact: {result.records} record(s) and {result.checkpoints} checkpoint(s) verified{unverified}")
