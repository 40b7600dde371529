"""``sharpscope landscape CKPT --data D --directions eig|random|pca|interp --out DIR``: a 1-D or 2-D
loss-landscape slice around a checkpoint, saved as ``slice.npz`` + ``slice.json`` with its figures
(thin layer over :mod:`sharpscope.landscape` and :mod:`sharpscope.plots.landscape`)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from sharpscope_cli._common import (
    BN,
    LOSS_HELP,
    MODEL_HELP,
    DirectionKind,
    DType,
    GridMethod,
    Loss,
    Normalization,
    ProductPrecision,
    check_fits,
    default_loss,
    err,
    load_model,
    progress,
)

if TYPE_CHECKING:  # the library loads in the command body: --help starts without torch
    from sharpscope.landscape import SliceResult

GRID_HELP = "START:STOP:NUM, NUM evenly spaced values from START to STOP"


def parse_range(text: str | None, name: str) -> tuple[float, float, int] | None:
    """``"START:STOP:NUM"`` -> ``(START, STOP, NUM)`` (None for None); the values are checked by
    :class:`~sharpscope.landscape.SliceSettings`."""
    if text is None:
        return None
    parts = text.split(":")
    try:
        if len(parts) != 3:
            raise ValueError
        return float(parts[0]), float(parts[1]), int(parts[2])
    except ValueError:
        from sharpscope.errors import ConfigError

        raise ConfigError(f"--{name} must look like START:STOP:NUM (e.g. -1:1:21), got {text!r}") from None


def output_stem(out_dir: Path, force: bool) -> Path:
    """``out_dir/slice``, checked writable, refused if a slice is there already (unless ``force``)."""
    from sharpscope.errors import ConfigError
    from sharpscope.io.atomic import check_target
    from sharpscope.validation import check_output_dir

    check_output_dir(out_dir, "--out")
    stem = out_dir / "slice"
    for name in ("slice.npz", "slice.json", *(f"{fig}.{ext}" for fig in ("line", "contour", "surface")
                                              for ext in ("png", "pdf", "json"))):
        check_target(out_dir / name, "--out")  # no named pipe or device is replaced, checked before any work
    if not force and any(p.exists() for p in (stem.with_suffix(".npz"), stem.with_suffix(".json"))):
        raise ConfigError(f"{stem}.json/.npz already exist; pass --force to overwrite")
    return stem


def write_figures(result: SliceResult, out_dir: Path, *, command: str, log: bool, vmax: float | None,
                  caption: str | None) -> list[str]:
    """The line figure of a 1-D slice, the contour and surface figures of a 2-D one (PNG, PDF, JSON), each drawn
    from its stored numbers (so ``sharpscope plot --from-figure`` draws it again)."""
    from sharpscope.plots.landscape import draw_slice, landscape_data
    from sharpscope.plots.save import save_figure  # plotting imports here: they slow every other command's start

    records = {"line": landscape_data(result, "line")} if result.dims == 1 else \
        {name: landscape_data(result, name, log=log, vmax=vmax) for name in ("contour", "surface")}
    return [str(path) for name, record in records.items()
            for path in save_figure(draw_slice(record, **record["draw"]), out_dir / name, data=record, command=command, caption=caption)]


def summary_text(result: SliceResult, out_dir: Path) -> str:
    """One line: the slice, its grid, the loss at the center and its range, the cost, where."""
    shape = "×".join(str(len(a)) for a in (result.alphas, result.betas) if a is not None)
    low, high = ("n/a", "n/a") if result.loss_range is None else (f"{v:.6g}" for v in result.loss_range)
    return (f"{result.directions['kind']} {result.dims}-D slice ({shape} points, {result.settings['method']}): center "
            f"loss {result.center_loss:.6g}, min {low}, max {high}; {result.evaluations} evaluations in "
            f"{result.seconds:.1f} s -> {out_dir}")


def landscape_cmd(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint at the center of the slice (.safetensors, .pt, ...).")],
    data: Annotated[str, typer.Option(help="mnist1d, cifar10:DIR_OR_NPZ, cifar100:DIR, mnist:NPZ, npz:PATH (arrays x, y) or text:PATH (64-byte windows, next-byte targets).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Output folder: slice.npz, slice.json and the figures (PNG, PDF, JSON).")],
    directions: Annotated[DirectionKind, typer.Option(help="eig: top Hessian eigenvectors; random: filter-normalised random; pca: principal directions of --iterate checkpoints; interp: the line to --other.")] = DirectionKind.random,
    dims: Annotated[int | None, typer.Option(help="1 or 2 (default 2; interp is 1-D).")] = None,
    alphas: Annotated[str | None, typer.Option(help=f"First axis {GRID_HELP} (default -1:1:21; interp -0.5:1.5:21; pca: around the path).")] = None,
    betas: Annotated[str | None, typer.Option(help=f"Second axis {GRID_HELP} (2-D; defaults as --alphas).")] = None,
    other: Annotated[Path | None, typer.Option(help="interp: the checkpoint at t = 1.")] = None,
    iterates: Annotated[list[Path] | None, typer.Option("--iterate", help="A run's checkpoint (or a folder of them, sorted by name); repeatable. pca: the iterates whose principal directions span the slice; 2-D: their projected path is drawn.")] = None,
    normalization: Annotated[Normalization, typer.Option(help="random: filter or layer normalisation.")] = Normalization.filter,
    include_bn_bias: Annotated[bool, typer.Option("--include-bn-bias", help="random: also perturb biases and normalisation parameters.")] = False,
    n: Annotated[int | None, typer.Option(help="Keep the first N examples.")] = None,
    model: Annotated[str | None, typer.Option(help=MODEL_HELP)] = None,
    loss: Annotated[Loss | None, typer.Option(help=LOSS_HELP, show_default=False)] = None,
    bn: Annotated[BN, typer.Option(help="BatchNorm: eval (running stats) or batch (stats of each fixed batch).")] = BN.eval,
    batch_size: Annotated[int, typer.Option(help="Examples per batch (memory).")] = 1000,
    chunk_size: Annotated[int, typer.Option(help="Grid points evaluated together in one vmapped pass (memory).")] = 16,
    method: Annotated[GridMethod, typer.Option(help="auto (time vmap and loop on a few points, keep the faster), vmap or loop.")] = GridMethod.auto,
    tol: Annotated[float, typer.Option(help="eig: relative Ritz residual at which Lanczos stops.")] = 1e-3,
    max_iter: Annotated[int | None, typer.Option(help="eig: Lanczos step limit.")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto.")] = "auto",
    dtype: Annotated[DType, typer.Option(help="The model's dtype during the slice.")] = DType.float32,
    precision: Annotated[ProductPrecision, typer.Option(help="Loss arithmetic: strict float32, tf32 (CUDA TF32 matmuls, about 1e-3 relative error; nothing changes on a CPU) or bf16 (bfloat16 autocast, float32 only).")] = ProductPrecision.strict,
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
    from sharpscope.data import resolve_data
    from sharpscope.errors import ConfigError
    from sharpscope.io import jsonsafe
    from sharpscope.landscape import SliceSettings, slice_around
    from sharpscope.landscape.around import check_sources
    from sharpscope.probe import precision_note

    loss_name = default_loss(None if loss is None else loss.value, model)
    settings = SliceSettings(
        directions=directions.value, dims=dims, alphas=parse_range(alphas, "alphas"), betas=parse_range(betas, "betas"),
        normalization=normalization.value, include_bn_bias=include_bn_bias, loss=loss_name, bn=bn.value,
        batch_size=batch_size, chunk_size=chunk_size, method=method.value, tol=tol, max_iter=max_iter, device=device,
        dtype=dtype.value, precision=precision.value, seed=seed)
    check_sources(settings, other, iterates)
    if n is not None and n < 1:
        raise ConfigError(f"--n must be positive, got {n}")
    stem = output_stem(out_dir, force)
    net = load_model(checkpoint, model, unsafe_load)
    dataset = resolve_data(data, n=n)
    check_fits(net, loss_name, dataset.x, dataset.y, model=model, data=data)
    from sharpscope.parallel import resolve_device

    note = precision_note(precision.value, str(resolve_device(device)), dtype.value)
    if note is not None:
        err.print(f"note: {note}", highlight=False, markup=False, soft_wrap=True)
    with progress(unit="points", bar=not as_json and err.is_terminal) as update:
        result = slice_around(net, dataset.x, dataset.y, settings, other=other, iterates=iterates,
                              unsafe_load=unsafe_load,
                              progress=None if update is None else lambda done, total: update("landscape", done, total))
    command = shlex.join(["sharpscope", *sys.argv[1:]])
    result.settings.update({"checkpoint": str(checkpoint), "data": dataset.name, "command": command})
    files = [str(p) for p in result.save(stem)]
    if figures:
        files += write_figures(result, out_dir, command=command, log=log, vmax=vmax, caption=caption)
    if as_json:
        sys.stdout.write(jsonsafe.dumps({**result.to_dict(), "files": files}) + "\n")
    else:
        typer.echo(summary_text(result, out_dir))
