"""``sharpscope landscape CKPT --data D --directions eig|random|pca|interp --out DIR``: a 1-D or 2-D
loss-landscape slice around a checkpoint, saved as ``slice.npz`` + ``slice.json`` with its figures
(thin layer over :mod:`sharpscope.landscape` and :mod:`sharpscope.plots.landscape`)."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import typer
from rich.console import Console

from sharpscope.curvature import Objective
from sharpscope.data import resolve_data
from sharpscope.errors import ConfigError
from sharpscope.io import jsonsafe, load_checkpoint
from sharpscope.landscape import (
    covering_grid,
    eigen_directions,
    interpolation_direction,
    pca_directions,
    random_directions,
    slice_1d,
    slice_2d,
)
from sharpscope.landscape.grid import check_grid_memory
from sharpscope.losses import get_loss
from sharpscope.parallel import resolve_device
from sharpscope.validation import check_output_dir, check_seed, check_tol

err = Console(stderr=True)
DTYPES = {"float32": torch.float32, "float64": torch.float64}


class DirectionKind(str, Enum):
    eig = "eig"
    random = "random"
    pca = "pca"
    interp = "interp"


def parse_range(text: str, name: str) -> tuple[float, float, int]:
    """``"START:STOP:NUM"`` -> ``(START, STOP, NUM)``, checked (finite, START < STOP, NUM >= 2);
    :func:`axis_values` makes the points once the grid's memory has been checked."""
    parts = text.split(":")
    try:
        start, stop, num = float(parts[0]), float(parts[1]), int(parts[2])
        if len(parts) != 3:
            raise ValueError
    except (ValueError, IndexError):
        raise ConfigError(f"--{name} must look like START:STOP:NUM (e.g. -1:1:21), got {text!r}") from None
    if num < 2 or not start < stop or not (np.isfinite(start) and np.isfinite(stop)):
        raise ConfigError(f"--{name} {text!r}: needs finite START < STOP and NUM >= 2")
    return start, stop, num


def axis_values(spec: tuple[float, float, int]) -> np.ndarray:
    """``NUM`` evenly spaced values from START to STOP (both included)."""
    return np.linspace(*spec)


@contextmanager
def point_bar(enabled: bool) -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar of grid points on stderr."""
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn  # lazy: start-up

    columns = (TextColumn("landscape"), BarColumn(), MofNCompleteColumn(), TextColumn("points"), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task("points", total=None)
        yield lambda done, total: bar.update(task, total=total, completed=done)


def landscape_cmd(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint at the center of the slice (.safetensors, .pt, ...).")],
    data: Annotated[str, typer.Option(help="mnist1d, cifar10:DIR_OR_NPZ, cifar100:DIR, mnist:NPZ or npz:PATH (arrays x, y).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Output folder: slice.npz, slice.json and the figures (PNG, PDF, JSON).")],
    directions: Annotated[DirectionKind, typer.Option(help="eig: top Hessian eigenvectors; random: filter-normalised random; pca: principal directions of --iterate checkpoints; interp: the line to --other.")] = DirectionKind.random,
    dims: Annotated[int | None, typer.Option(help="1 or 2 (default 2; interp is 1-D).")] = None,
    alphas: Annotated[str | None, typer.Option(help="First axis START:STOP:NUM (default -1:1:21; interp -0.5:1.5:21; pca: around the path).")] = None,
    betas: Annotated[str | None, typer.Option(help="Second axis START:STOP:NUM (2-D; defaults as --alphas).")] = None,
    other: Annotated[Path | None, typer.Option(help="interp: the checkpoint at t = 1.")] = None,
    iterate: Annotated[list[Path] | None, typer.Option("--iterate", help="A run's checkpoint (or a folder of them, sorted by name); repeatable. pca: the iterates whose principal directions span the slice; 2-D: their projected path is drawn.")] = None,
    normalization: Annotated[str, typer.Option(help="random: filter or layer normalisation.")] = "filter",
    include_bn_bias: Annotated[bool, typer.Option("--include-bn-bias", help="random: also perturb biases and normalisation parameters.")] = False,
    n: Annotated[int | None, typer.Option(help="Keep the first N examples.")] = None,
    model: Annotated[str | None, typer.Option(help="module:factory returning the nn.Module, for checkpoints without a model spec.")] = None,
    loss: Annotated[str, typer.Option(help="ce, mse (½‖f−e_y‖² summed over outputs) or mse-mean.")] = "ce",
    bn: Annotated[str, typer.Option(help="BatchNorm: eval (running stats) or batch (stats of each fixed batch).")] = "eval",
    batch_size: Annotated[int, typer.Option(help="Examples per batch (memory).")] = 1000,
    chunk_size: Annotated[int, typer.Option(help="Grid points evaluated together in one vmapped pass (memory).")] = 16,
    method: Annotated[str, typer.Option(help="auto (time vmap and loop on a few points, keep the faster), vmap or loop.")] = "auto",
    tol: Annotated[float, typer.Option(help="eig: relative Ritz residual at which Lanczos stops.")] = 1e-3,
    max_iter: Annotated[int | None, typer.Option(help="eig: Lanczos step limit.")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto.")] = "auto",
    dtype: Annotated[str, typer.Option(help="float32 or float64.")] = "float32",
    allow_tf32: Annotated[bool, typer.Option("--allow-tf32", help="Let CUDA use TF32.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the random directions and of Lanczos.")] = 0,
    figures: Annotated[bool, typer.Option("--figures/--no-figures", help="Also write the figures.")] = True,
    log: Annotated[bool, typer.Option("--log/--linear", help="2-D figures: log10 of the loss (far from the center it grows by orders of magnitude) or the loss itself.")] = True,
    vmax: Annotated[float | None, typer.Option(help="2-D figures: clip the loss at this value.")] = None,
    caption: Annotated[str | None, typer.Option(help="Caption stored in each figure's JSON.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite slice files already in --out.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result's record as one JSON object.")] = False,
    unsafe_load: Annotated[bool, typer.Option("--unsafe-load", help="Allow pickles that run code when loaded. Only for files you trust.")] = False,
) -> None:
    """Loss (and accuracy) on a 1-D or 2-D slice through a checkpoint, with contour and surface figures."""
    from sharpscope.plots.landscape import contour_figure, landscape_data, line_figure, surface_figure
    from sharpscope.plots.save import save_figure  # plotting imports here: they slow every other command's start

    kind = directions.value
    dims = dims if dims is not None else (1 if kind == "interp" else 2)
    if dims not in (1, 2):
        raise ConfigError(f"--dims must be 1 or 2, got {dims}")
    if kind == "interp" and (other is None or dims != 1):
        raise ConfigError("--directions interp needs --other CKPT and is 1-D (--dims 1)")
    if kind != "interp" and other is not None:
        raise ConfigError("--other is for --directions interp")
    if kind == "pca" and not iterate:
        raise ConfigError("--directions pca needs the run's checkpoints: --iterate CKPT_OR_FOLDER (repeatable)")
    if iterate and dims == 1 and kind != "pca":
        raise ConfigError("--iterate draws a path on 2-D slices only (or gives the pca directions)")
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype must be float32 or float64, got {dtype!r}")
    if n is not None and n < 1:
        raise ConfigError(f"--n must be positive, got {n}")
    specs = [None if text is None else parse_range(text, name) for text, name in ((alphas, "alphas"), (betas, "betas"))]
    check_grid_memory([21 if spec is None else spec[2] for spec in specs[:dims]])  # pca's default axes have 21 points
    ranges = [None if spec is None else axis_values(spec) for spec in specs]
    check_seed("--seed", seed)
    check_tol("--tol", tol)
    check_output_dir(out_dir, "--out")
    stem = out_dir / "slice"
    if not force and any(p.exists() for p in (stem.with_suffix(".npz"), stem.with_suffix(".json"))):
        raise ConfigError(f"{stem}.json/.npz already exist; pass --force to overwrite")

    dev = resolve_device(device)
    loaded = load_checkpoint(checkpoint, model_factory=model, unsafe_load=unsafe_load)
    dataset = resolve_data(data, n=n)
    net = loaded.model.to(device=dev, dtype=DTYPES[dtype])
    objective = Objective(net, get_loss(loss), (dataset.x.to(dev), dataset.y.to(dev)), bn=bn, batch_size=batch_size)

    if kind == "eig":
        chosen = eigen_directions(objective, dims, tol=tol, max_iter=max_iter, seed=seed, allow_tf32=allow_tf32)
    elif kind == "random":
        chosen = random_directions(objective, dims, seed=seed, normalization=normalization,
                                   include_bn_and_bias=include_bn_bias)
    elif kind == "pca":
        chosen = pca_directions(objective, iterate or [], dims, unsafe_load=unsafe_load)
    else:
        chosen = interpolation_direction(objective, other, unsafe_load=unsafe_load)

    def axis(j: int) -> np.ndarray:
        if ranges[j] is not None:
            return ranges[j]
        if kind == "pca":
            return covering_grid(np.asarray(chosen.description["coordinates"])[:, j], 21)
        return np.linspace(-0.5, 1.5, 21) if kind == "interp" else np.linspace(-1.0, 1.0, 21)

    options = dict(chunk_size=chunk_size, method=method, allow_tf32=allow_tf32)
    with point_bar(not as_json and err.is_terminal) as bar:
        if dims == 1:
            result = slice_1d(objective, chosen, axis(0), progress=bar, **options)
        else:
            result = slice_2d(objective, chosen, axis(0), axis(1), path=iterate or None,
                              unsafe_load=unsafe_load, progress=bar, **options)
    command = shlex.join(["sharpscope", *sys.argv[1:]])
    result.settings.update({"checkpoint": str(checkpoint), "data": dataset.name, "loss_fn": loss, "seed": seed,
                            "command": command})
    files = [str(p) for p in result.save(stem)]
    if figures:
        data_record = landscape_data(result)
        if dims == 1:
            files += map(str, save_figure(line_figure(result), out_dir / "line", data=data_record, command=command,
                                          caption=caption))
        else:
            for name, draw in (("contour", contour_figure), ("surface", surface_figure)):
                fig = draw(result, log=log, vmax=vmax)
                files += map(str, save_figure(fig, out_dir / name, data=data_record, command=command,
                                              caption=caption))
    if as_json:
        sys.stdout.write(jsonsafe.dumps({**result.to_dict(), "files": files}) + "\n")
        return
    record = result.to_dict()
    shape = "×".join(str(len(a)) for a in (result.alphas, result.betas) if a is not None)
    low, high = (f"{record[k]:.6g}" if record[k] is not None else "n/a" for k in ("loss_min", "loss_max"))
    typer.echo(f"{kind} {dims}-D slice ({shape} points, {result.settings['method']}): center loss "
               f"{result.center_loss:.6g}, min {low}, max {high}; {result.evaluations} evaluations in "
               f"{result.seconds:.1f} s -> {out_dir}")
