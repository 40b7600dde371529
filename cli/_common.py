"""What every ``sharpscope`` command shares: the consoles, the option choices, one progress display and
the error wrapper with its exit codes.

Nothing here imports torch or the library at module level, so ``sharpscope --help`` and each
command's ``--help`` start without them; a command imports what it needs in its body.
"""

from __future__ import annotations

import re
import signal
import sys
import time
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum
from functools import wraps
from pathlib import Path
from typing import Any, TextIO

import typer
from rich.console import Console

EXIT_CODES = ("Exit codes: 0 completed, 1 error (one line on stderr), 3 training diverged, 130 interrupted "
              "(Ctrl-C), 143 terminated (SIGTERM).")
EXIT_ERROR, EXIT_DIVERGED, EXIT_INTERRUPTED, EXIT_TERMINATED = 1, 3, 130, 143
out = Console()
err = Console(stderr=True)

# Names the library registers, repeated here so that --help needs no import of torch; a test checks
# that they equal the library's (sharpscope.experiments.RECIPES, ...STUDIES, sharpscope.plots.kinds.KINDS).
RECIPE_NAMES = ("eos-gd", "eos-momentum", "eos-ce", "eos-adam", "eos-cifar5k", "sam-edge", "sam-edge-cnn",
                "sam-minibatch", "sam-flatness", "demo", "landscape-resnet18")
STUDY_NAMES = ("eos", "sam-edge", "escape", "label-noise", "escape-a3", "escape-a4", "sam-flatness", "population",
               "smoothing")
PLOT_KINDS = ("auto", "sharpness", "trace", "escape", "arms", "arms-lambda", "minibatch", "density", "layers")


DATA_ROOT_HELP = ("Folder holding the data files recipes and studies use (cifar10_train16k.npz, cifar10_test2k.npz, "
                  "mnist5k.npz); default $SHARPSCOPE_DATA. Without a file a run stops or uses the fallback it "
                  "states (docs/data.md).")


def use_data_root(path: Path | None) -> None:
    """Make ``path`` the data root of this command and of the processes it starts (``$SHARPSCOPE_DATA``);
    None keeps the environment's."""
    if path is None:
        return
    import os

    from sharpscope.data.root import DATA_ROOT_ENV
    from sharpscope.errors import ConfigError

    if not path.is_dir():
        raise ConfigError(f"--data-root {path} is not a folder")
    os.environ[DATA_ROOT_ENV] = str(path.resolve())


# ------------------------------------------------------------------------------------- choices
Loss = Enum("Loss", {"ce": "ce", "mse": "mse", "mse_mean": "mse-mean", "token_ce": "token-ce"}, type=str)
BN = Enum("BN", {"eval": "eval", "batch": "batch"}, type=str)
HVPMode = Enum("HVPMode", {"auto": "auto", "fwd_rev": "fwd-rev", "rev_rev": "rev-rev", "fd": "fd"}, type=str)
Operator = Enum("Operator", {"hessian": "hessian", "ggn": "ggn", "ef": "ef"}, type=str)
Shard = Enum("Shard", {"data": "data", "fsdp": "fsdp"}, type=str)
SharpnessNorm = Enum("SharpnessNorm", {"l2": "l2", "linf": "linf"}, type=str)
OutputTrace = Enum("OutputTrace", {"exact": "exact", "hutchinson": "hutchinson", "hutchpp": "hutch++"}, type=str)
Stop = Enum("Stop", {"residual": "residual", "eigenvalue": "eigenvalue"}, type=str)
TraceMethod = Enum("TraceMethod", {"hutchpp": "hutch++", "hutchinson": "hutchinson"}, type=str)
ProductPrecision = Enum("ProductPrecision", {"strict": "strict", "tf32": "tf32", "bf16": "bf16"}, type=str)
BasisLocation = Enum("BasisLocation", {"device": "device", "host": "host"}, type=str)
DType = Enum("DType", {"float32": "float32", "float64": "float64"}, type=str)
ProbeDType = Enum("ProbeDType", {"float32": "float32", "float64": "float64", "bfloat16": "bfloat16"}, type=str)
WeightPrecision = Enum("WeightPrecision", {"upcast": "upcast", "native": "native"}, type=str)
Scale = Enum("Scale", {"smoke": "smoke", "cpu": "cpu", "gpu": "gpu"}, type=str)
DirectionKind = Enum("DirectionKind", {"eig": "eig", "random": "random", "pca": "pca", "interp": "interp"}, type=str)
Normalization = Enum("Normalization", {"filter": "filter", "layer": "layer"}, type=str)
GridMethod = Enum("GridMethod", {"auto": "auto", "vmap": "vmap", "loop": "loop"}, type=str)


#: Each field of ``sharpscope.measures.SharpnessSettings`` and the ``probe`` flag that sets it (the seed
#: is derived from ``--seed``). A test checks that every field has its flag and that each flag's default
#: is the library's.
SHARPNESS_FLAGS = {"rho": "--rho", "norm": "--sharpness-norm", "adaptive": "--adaptive", "m": "--m",
                   "steps": "--ascent-steps", "restarts": "--restarts", "samples": "--sharpness-samples",
                   "target": "--pacbayes-target", "tol": "--pacbayes-tol", "epsilon": "--keskar-epsilon",
                   "trace": "--output-trace", "matvecs": "--output-trace-matvecs", "block": "--output-trace-block"}


def sharpness_settings(**fields: Any) -> Any:
    """``SharpnessSettings(**fields)``; a value it refuses is one line naming the flag
    (:data:`SHARPNESS_FLAGS`), so ``tol`` is not mistaken for the Lanczos ``--tol``."""
    from sharpscope.errors import ConfigError
    from sharpscope.measures import SharpnessSettings

    try:
        return SharpnessSettings(**fields)
    except ConfigError as e:
        flag = SHARPNESS_FLAGS.get(e.argument or "")
        if flag is None:
            raise
        raise ConfigError(renamed(str(e), str(e.argument), flag)) from None


def given_sharpness_fields(ctx: typer.Context) -> set[str]:
    """The fields of :data:`SHARPNESS_FLAGS` whose flag is on the command line (each flag's parameter is
    the flag spelled with underscores). Compared by name: typer may carry its own copy of click."""
    sources = {field: ctx.get_parameter_source(flag[2:].replace("-", "_")) for field, flag in SHARPNESS_FLAGS.items()}
    return {field for field, source in sources.items() if getattr(source, "name", None) == "COMMANDLINE"}


def check_sharpness_flags(given: set[str], measures: tuple[str, ...]) -> None:
    """Refuse a measure's flag that no measure of ``--sharpness`` reads: it would change nothing."""
    from sharpscope.errors import ConfigError
    from sharpscope.measures.settings import used_by

    for field, flag in SHARPNESS_FLAGS.items():
        readers = used_by(field)
        if field in given and not set(readers) & set(measures):
            named = f"--sharpness names only {', '.join(measures)}" if measures else "--sharpness is not given"
            raise ConfigError(f"{flag} applies to {', '.join(readers)}, and {named}")


# ------------------------------------------------------------------------------------ progress
class ProgressLines:
    """``progress(stage, done, total, info="")`` callback writing
    ``stage: done/total UNIT, t s in this stage (T s in all)`` lines to ``stream``: at most one line every
    ``every`` seconds, so a long stage piped to a log file is not silent until it ends and logs stay
    short. A stage's time counts from its first report (each layer of ``--per-layer`` is its own stage)."""

    def __init__(self, stream: TextIO, *, every: float = 5.0, unit: str = "HVPs",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream, self.every, self.unit, self.clock = stream, every, unit, clock
        self.start = self.last = clock()
        self.stage_start: dict[str, float] = {}

    def __call__(self, stage: str, done: int, total: int, info: str = "") -> None:
        now = self.clock()
        begun = self.stage_start.setdefault(stage, now)
        if now - self.last < self.every:
            return
        self.last = now
        extra = f" ({info})" if info else ""
        self.stream.write(f"{stage}: {done}/{total} {self.unit}{extra}, {now - begun:.0f} s in this stage "
                          f"({now - self.start:.0f} s in all)\n")
        self.stream.flush()


@contextmanager
def progress(*, unit: str, bar: bool, lines: bool = False) -> Iterator[Callable[..., None] | None]:
    """``update(stage, done, total, info="")``: a progress bar on stderr with one row per stage
    (``bar``), else plain :class:`ProgressLines` (``lines``, for a stderr that is not a terminal),
    else None."""
    if not bar:
        yield ProgressLines(sys.stderr, unit=unit) if lines else None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn  # lazy: start-up

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn(f"{unit}  {{task.fields[info]}}"), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True) as display:
        tasks: dict[str, Any] = {}

        def update(stage: str, done: int, total: int | None, info: str = "") -> None:
            if stage not in tasks:
                tasks[stage] = display.add_task(stage, total=total, info=info)
            display.update(tasks[stage], total=total, completed=done if total is None else min(done, total),
                           info=info)

        yield update


# -------------------------------------------------------------------------------------- errors
def command_flags(fn: Callable[..., Any]) -> dict[str, list[str]]:
    """Each option of a command function, by parameter name: its long flags (``--out``, ``--max-iter``)."""
    from typer.models import OptionInfo

    flags: dict[str, list[str]] = {}
    for name, hint in typing.get_type_hints(fn, include_extras=True).items():
        for info in getattr(hint, "__metadata__", ()):
            if isinstance(info, OptionInfo):
                # inside Annotated, typer takes a leading string (stored as the default) for a declaration
                decls = [info.default, *(info.param_decls or ())]
                declared = [d.split("/")[0] for d in decls if isinstance(d, str) and d.startswith("--")]
                flags[name] = declared or ["--" + name.replace("_", "-")]
    return flags


def option_flag(argument: str, flags: dict[str, list[str]]) -> str | None:
    """The command's flag for the library argument ``argument`` (``max_iter`` -> ``--max-iter``): the
    option spelled that way, ``--set KEY.SUB`` for a dotted config key where the command takes ``--set``,
    else the option whose parameter is named ``argument``; None if none."""
    dashed = "--" + argument.replace("_", "-")
    if any(dashed in spelled for spelled in flags.values()):
        return dashed
    if "." in argument and any("--set" in spelled for spelled in flags.values()):
        return f"--set {argument}"  # a config entry below a field: optimizer_kwargs.rho
    return flags[argument][0] if argument in flags else None


def renamed(message: str, argument: str, flag: str) -> str:
    """``message`` with the library argument ``argument`` spelled as the command's ``flag`` (the word
    alone; "force=True" names an on/off flag, which the command line spells "--force")."""
    return re.sub(rf"(?<![\w-]){re.escape(argument)}(?:=True)?(?![\w-])", flag, message)


def error_line(exc: Exception, flags: dict[str, list[str]]) -> str | None:
    """The one line shown for an error the user can act on, or None for a bug (shown in full): a sharpscope
    error's message with the library argument it names (``exc.argument``) spelled as the command's flag where
    the command has one.

    Looked up in ``sys.modules`` so that no error class imports torch."""
    errors = sys.modules.get("sharpscope.errors")
    if errors is not None and isinstance(exc, errors.SharpscopeError):
        flag = option_flag(exc.argument, flags) if exc.argument else None
        return str(exc) if flag is None else renamed(str(exc), exc.argument, flag)
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(exc, torch.cuda.OutOfMemoryError):
        return "out of GPU memory; use a smaller --batch-size or --n"
    if isinstance(exc, OSError):
        from sharpscope.errors import os_error_text

        return f"{f'{exc.filename}: ' if exc.filename else ''}{os_error_text(exc)}"
    return None


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, like Ctrl-C: every ``finally`` and two-pass restore runs,
    and the files already written stay consistent (atomic writes, fsynced appends)."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` (the previous handler is put back after).
    Only the main thread can set handlers; elsewhere the block runs with the handler it has."""
    try:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def clean_errors(fn: Callable[..., None]) -> Callable[..., None]:
    """Turn sharpscope's errors, file-system errors, Ctrl-C and SIGTERM into one line on stderr and an
    exit code a script can read (:data:`EXIT_CODES`)."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            with sigterm_as_interrupt():
                fn(*args, **kwargs)
        except KeyboardInterrupt as e:
            terminated = isinstance(e, Terminated)
            err.print(f"{'terminated (SIGTERM)' if terminated else 'interrupted'}; files already written are intact "
                      "(a training run resumes when the same command is run again)", highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_TERMINATED if terminated else EXIT_INTERRUPTED) from None
        except Exception as e:
            line = error_line(e, command_flags(fn))
            if line is None:
                raise
            err.print(f"[bold red]error:[/] {line}", highlight=False, soft_wrap=True, markup=True)
            raise typer.Exit(EXIT_ERROR) from None

    return wrapper


# ------------------------------------------------------------------------------ models and losses
HF_PREFIX = "hf:"
LOSS_HELP = ("ce: mean cross entropy; mse: ½‖f−e_y‖² summed over outputs; mse-mean: mean over outputs; token-ce: mean "
             "cross entropy over tokens (language models, --data text:PATH). Default: token-ce with --model hf:, else ce.")
MODEL_HELP = ("module:factory returning the nn.Module, for checkpoints without a model spec; hf:CONFIG_OR_FOLDER for a "
              "Hugging Face causal LM (a local config.json or a saved model folder; extra hf).")


def default_loss(loss: str | None, model: str | None) -> str:
    """The loss a command uses: ``loss`` when given, else the causal-LM token loss for ``--model hf:...``
    (a language model is scored per token), else mean cross entropy."""
    if loss is not None:
        return loss
    return "token-ce" if model is not None and model.startswith(HF_PREFIX) else "ce"


def fit_hint(model: str | None, data: str, loss: str) -> str | None:
    """What to change when the model does not fit the data and loss: the ``hf:`` model and ``text:`` data
    take token ids and ``--loss token-ce``; None when neither is involved."""
    hf, text = model is not None and model.startswith(HF_PREFIX), data.startswith("text:")
    if hf and not text:
        return "a Hugging Face causal LM (--model hf:...) reads token ids: give --data text:PATH"
    if (hf or text) and loss != "token-ce":
        return ("a causal LM on text: data has a next-token target at every position: use --loss token-ce "
                "(the default with --model hf:)")
    return None


def load_model(checkpoint: Path, model: str | None, unsafe_load: bool) -> Any:
    """The model: a Hugging Face model for ``hf:PATH`` (weights from the checkpoint unless it is that
    model's own folder), else the checkpoint with its spec or ``module:factory``. A checkpoint without a
    spec is one line naming both ``--model`` forms (and the folder, when a Hugging Face config.json is there)."""
    from sharpscope.errors import CheckpointError
    from sharpscope.io import load_checkpoint

    if model is not None and model.startswith(HF_PREFIX):
        from sharpscope.io.hf_weights import hf_checkpoint_model

        return hf_checkpoint_model(model.removeprefix(HF_PREFIX), checkpoint)
    try:
        return load_checkpoint(checkpoint, model_factory=model, unsafe_load=unsafe_load).model
    except CheckpointError as e:
        if model is not None or "CLI --model" not in str(e):
            raise
        folder = checkpoint.parent
        where = f"--model hf:{folder}" if (folder / "config.json").is_file() else "--model hf:CONFIG_OR_FOLDER"
        raise CheckpointError(f"{e}; for a Hugging Face causal LM give {where} (and --data text:PATH)",
                              argument=e.argument) from None


def check_fits(net: Any, loss: str, x: Any, y: Any, *, model: str | None, data: str) -> None:
    """:func:`sharpscope.curvature.fits.check_model_fits` on two examples, its one line completed by
    :func:`fit_hint` when the ``hf:`` model or ``text:`` data is involved."""
    from sharpscope.curvature.fits import check_model_fits
    from sharpscope.errors import SharpscopeError
    from sharpscope.losses import get_loss

    try:
        check_model_fits(net, get_loss(loss), x[:2], y[:2], name="the data")
    except SharpscopeError as e:
        hint = fit_hint(model, data, loss)
        if hint is None:
            raise
        raise type(e)(f"{e}; {hint}", argument=e.argument) from None
