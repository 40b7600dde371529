"""What the commands share: the error wrapper (library argument names shown as flags, exit codes), the
start-up without torch, and the option choices and names kept equal to the library's."""

from __future__ import annotations

import errno
import subprocess
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, get_args, get_type_hints

import pytest
import torch
import typer
from sharpscope_cli import _common
from sharpscope_cli._common import EXIT_ERROR, EXIT_INTERRUPTED, clean_errors
from typer.testing import CliRunner

from sharpscope.errors import ConfigError


def failing_app(exc: BaseException) -> typer.Typer:
    """A one-command app whose command raises ``exc``, with options spelled as the real commands spell them."""
    app = typer.Typer()

    @app.command()
    @clean_errors
    def run(
        max_iter: Annotated[int | None, typer.Option(help="Lanczos step limit.")] = None,
        out_dir: Annotated[Path | None, typer.Option("--out", help="Output folder.")] = None,
        iterates: Annotated[list[Path] | None, typer.Option("--iterate", help="Repeatable.")] = None,
        cache_graphs: Annotated[bool, typer.Option("--cache-graphs/--no-cache-graphs")] = False,
        overrides: Annotated[list[str] | None, typer.Option("--set", help="KEY=VALUE, repeatable.")] = None,
    ) -> None:
        raise exc

    @app.command()
    def other() -> None:  # a second command keeps `run` a subcommand, as in the real app
        pass

    return app


def config_error(message: str, argument: str | None) -> ConfigError:
    error = ConfigError(message)
    error.argument = argument
    return error


@pytest.mark.parametrize("message, argument, shown", [
    ("max_iter must be a positive integer, got 0", "max_iter", "--max-iter must be a positive integer, got 0"),
    ("out_dir is not a folder: x", "out_dir", "--out is not a folder: x"),
    ("directions 'pca' needs iterates, the run's checkpoints", "iterates",
     "directions 'pca' needs --iterate, the run's checkpoints"),
    ("cache_graphs applies to the Hessian only", "cache_graphs", "--cache-graphs applies to the Hessian only"),
    ("pass cache_graphs=True to keep them", "cache_graphs", "pass --cache-graphs to keep them"),  # an on/off flag
    ("block_size must be positive", "block_size", "block_size must be positive"),  # not an option of the command
    ("max_iter_total is not max_iter", "max_iter", "max_iter_total is not --max-iter"),  # whole names only
    ("max_iter must be positive", None, "max_iter must be positive"),
    ("optimizer_kwargs.rho must be >= 0.0, got -1", "optimizer_kwargs.rho",
     "--set optimizer_kwargs.rho must be >= 0.0, got -1"),  # a config entry below a field
])
def test_the_library_argument_is_shown_as_the_commands_flag(message: str, argument: str | None, shown: str) -> None:
    result = CliRunner().invoke(failing_app(config_error(message, argument)), ["run"])
    assert result.exit_code == EXIT_ERROR
    assert result.stderr.strip() == f"error: {shown}"


def test_file_errors_interrupts_and_bugs() -> None:
    disk = OSError(errno.ENOSPC, "No space left on device", "/tmp/x.json")
    result = CliRunner().invoke(failing_app(disk), ["run"])
    assert result.exit_code == EXIT_ERROR and result.stderr.strip() == "error: /tmp/x.json: No space left on device (ENOSPC)"
    interrupted = CliRunner().invoke(failing_app(KeyboardInterrupt()), ["run"])
    assert interrupted.exit_code == EXIT_INTERRUPTED and interrupted.stderr.startswith("interrupted;")
    bug = CliRunner().invoke(failing_app(ZeroDivisionError("a bug")), ["run"])
    assert isinstance(bug.exception, ZeroDivisionError)  # not turned into a one-line error


def test_help_of_every_command_imports_neither_torch_nor_the_library() -> None:
    code = (
        "import sys\n"
        "import sharpscope_cli.main\n"
        "assert 'torch' not in sys.modules\n"
        "from sharpscope_cli.main import app\n"
        "for args in ([], ['probe'], ['train'], ['landscape'], ['reproduce'], ['plot'], ['verify'], ['demo']):\n"
        "    try:\n"
        "        app([*args, '--help'], prog_name='sharpscope')\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0, (args, e.code)\n"
        "loaded = sorted(m for m in sys.modules if m == 'torch' or m == 'sharpscope' or m.startswith('sharpscope.'))\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "sharpscope landscape" in done.stdout and "--max-iter" in done.stdout


def test_names_in_the_help_are_the_librarys() -> None:
    from sharpscope.experiments import RECIPES
    from sharpscope.experiments.studies import STUDIES
    from sharpscope.plots.kinds import KINDS

    assert tuple(RECIPES) == _common.RECIPE_NAMES
    assert tuple(STUDIES) == _common.STUDY_NAMES
    assert _common.PLOT_KINDS == KINDS


def test_choices_are_the_librarys() -> None:
    from sharpscope.curvature.algorithms.krylov_basis import BASIS_LOCATIONS
    from sharpscope.curvature.algorithms.ritz import Stop
    from sharpscope.curvature.operators.hessian import HVPMode
    from sharpscope.curvature.operators.objective import WeightPrecision
    from sharpscope.curvature.operators.precision import PRECISIONS
    from sharpscope.curvature.settings import TraceMethod
    from sharpscope.experiments import SCALES
    from sharpscope.landscape import around
    from sharpscope.losses import LOSSES
    from sharpscope.measures.settings import Norm as SharpnessNorm
    from sharpscope.measures.settings import TraceMethod as OutputTrace
    from sharpscope.models import registry
    from sharpscope.probe import Operator, Shard

    def values(enum: type) -> list[str]:
        return [member.value for member in enum]

    assert values(_common.Loss) == list(LOSSES)
    assert values(_common.HVPMode) == list(get_args(HVPMode))
    assert values(_common.Operator) == list(get_args(Operator))
    assert values(_common.Scale) == list(SCALES)
    assert sorted(values(_common.DirectionKind)) == sorted(around.DIRECTION_KINDS)
    assert values(_common.DType) == list(registry.MODEL_DTYPES) == list(registry.DTYPES)
    assert values(_common.ProductPrecision) == list(PRECISIONS)
    assert values(_common.BasisLocation) == list(BASIS_LOCATIONS)
    assert values(_common.Shard) == list(get_args(Shard))
    hints = get_type_hints(around.SliceSettings)
    for enum, field in ((_common.BN, "bn"), (_common.Normalization, "normalization"), (_common.GridMethod, "method")):
        assert values(enum) == list(get_args(hints[field]))
    assert values(_common.Stop) == list(get_args(Stop))
    assert values(_common.TraceMethod) == list(get_args(TraceMethod))
    assert values(_common.WeightPrecision) == list(get_args(WeightPrecision))
    assert values(_common.SharpnessNorm) == list(get_args(SharpnessNorm))
    assert values(_common.OutputTrace) == list(get_args(OutputTrace))
    assert get_args(hints["precision"]) == PRECISIONS  # slices and operators: one precision setting
    assert all(isinstance(getattr(torch, v), torch.dtype) for v in values(_common.ProbeDType))
    checked = {_common.Loss, _common.HVPMode, _common.Operator, _common.Scale, _common.DirectionKind, _common.DType,
               _common.ProductPrecision, _common.BasisLocation, _common.Shard, _common.BN, _common.Normalization,
               _common.GridMethod, _common.Stop, _common.TraceMethod, _common.WeightPrecision,
               _common.ProbeDType, _common.SharpnessNorm, _common.OutputTrace}
    declared = {v for v in vars(_common).values() if isinstance(v, type) and issubclass(v, Enum) and v is not Enum
                and v.__module__ == _common.__name__}
    assert declared == checked, declared ^ checked  # a new choice in the CLI gets its check here
