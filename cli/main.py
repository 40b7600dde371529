"""The ``sharpscope`` command line: a thin layer over the library (parse, load, call, print)."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, cast

import typer
from rich.table import Table
from sharpscope_cli._common import (
    BN,
    EXIT_CODES,
    LOSS_HELP,
    MODEL_HELP,
    BasisLocation,
    HVPMode,
    Loss,
    Operator,
    OutputTrace,
    ProbeDType,
    ProductPrecision,
    Shard,
    SharpnessNorm,
    Stop,
    TraceMethod,
    WeightPrecision,
    check_fits,
    check_sharpness_flags,
    clean_errors,
    default_loss,
    err,
    given_sharpness_fields,
    load_model,
    out,
    progress,
    sharpness_settings,
)

if TYPE_CHECKING:  # the library and torch load in the command bodies: --help starts without them
    from sharpscope.curvature import PerLayerCurvature
    from sharpscope.probe import ProbeReport

app = typer.Typer(help=f"Measure the sharpness of neural-network loss landscapes.\n\n{EXIT_CODES}",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


def quantity_labels(operator: str) -> dict[str, str]:
    """Row labels of the probe table that name the matrix measured: only the Hessian's top eigenvalue
    is the sharpness."""
    from sharpscope.probe import OPERATOR_NAMES

    if operator == "hessian":
        return {"top": "λ_max (sharpness)", "min": "λ_min", "trace": "trace"}
    name = OPERATOR_NAMES.get(operator, operator)
    return {"top": f"λ_max ({name})", "min": f"λ_min ({name})", "trace": f"tr({name})"}


def settings_caption(s: dict[str, Any]) -> str:
    """The table's caption: probe set, parameters, BatchNorm mode (only for a model with BatchNorm), products, dtype."""
    operator = s.get("operator", "hessian")
    products = f"HVP {s['hvp_mode']}" if operator == "hessian" else f"{str(operator).upper()} products"
    bn = f"BN {s['bn']}, " if s.get("has_batchnorm") else ""
    return (f"{s['probe_examples']} examples in {s['num_batches']} batch(es), {s['dim']:,} parameters, {bn}{products}, "
            f"{s['dtype']} on {s['device']}, seed {s['seed']}")


#: Probe-table rows of the sharpness measures (their values in docs/measures.md).
SHARPNESS_LABELS = {"worst": "worst-case sharpness", "average": "average sharpness", "keskar": "Keskar ε-sharpness",
                    "pacbayes": "PAC-Bayes 1/σ²", "jacobian": "Jacobian trace", "ggn": "GGN trace"}


def report_table(report: ProbeReport, title: str) -> Table:
    """The probe report as a table: each estimate with its uncertainty and cost."""
    s: dict[str, Any] = report.settings
    table = Table(title=title, title_justify="left", show_header=True, header_style="bold")
    for col in ("quantity", "value", "± / residual", "HVPs", "seconds"):
        table.add_column(col, justify="left" if col == "quantity" else "right")
    top = report.top
    names = quantity_labels(str(s.get("operator", "hessian")))
    for i, (value, res) in enumerate(zip(top.eigenvalues.tolist(), top.residuals.tolist())):
        table.add_row(f"λ{i + 1}" if i else names["top"], f"{value:.6g}", f"res {res:.1e}",
                      str(top.hvps) if i == 0 else "", f"{top.seconds:.2f}" if i == 0 else "")
    if report.most_negative is not None:
        neg = report.most_negative
        table.add_row(names["min"], f"{float(neg.eigenvalues[0]):.6g}", f"res {float(neg.residuals[0]):.1e}",
                      str(neg.hvps), f"{neg.seconds:.2f}")
    if report.trace is not None:
        tr = report.trace
        table.add_row(f"{names['trace']} ({tr.settings['method']})", f"{tr.estimate:.6g}", f"± {tr.stderr:.2g}",
                      str(tr.hvps), f"{tr.seconds:.2f}")
        table.add_row("trace / dim", f"{tr.estimate / s['dim']:.4g}", f"± {tr.stderr / s['dim']:.2g}", "", "")
    for name, result in (report.sharpness or {}).items():
        spread = "" if result.stderr is None else f"± {result.stderr:.2g}"
        table.add_row(SHARPNESS_LABELS.get(name, name), f"{result.value:.6g}", spread, "", f"{result.seconds:.2f}")
    if report.density is not None:
        d = report.density
        table.add_row("SLQ trace (density)", f"{d.trace:.6g}", f"± {d.trace_stderr:.2g}", str(d.hvps),
                      f"{d.seconds:.2f}")
    table.add_row("loss", f"{report.loss:.6g}", "", "", "")
    table.add_row("‖gradient‖", f"{report.grad_norm:.4g}", "", "", "")
    table.caption = settings_caption(s)
    deviation = (s.get("product_precision") or {}).get("deviation")
    if deviation is not None:
        pp = s["product_precision"]
        what = f"native {pp['weights']} {pp['mode']}" if "weights" in pp else pp["precision"]
        table.caption += f"; {what} products deviate {deviation:.1e} (relative) from strict ones"
    if report.sharpness:
        ss = s.get("sharpness_settings") or {}
        table.caption += (f"; sharpness ρ={ss.get('rho')} {ss.get('norm')}{' adaptive' if ss.get('adaptive') else ''}"
                          f"{'' if ss.get('m') is None else ', m=' + str(ss.get('m'))}")
    if not top.converged:
        table.caption += " — λ did NOT converge to tol; raise --max-iter"
    return table


def layers_table(result: PerLayerCurvature) -> Table:
    """Per-layer λ_max (and trace) as a table, one row per parameter group."""
    table = Table(title=f"per-layer curvature (grouped by {result.grouping})", title_justify="left",
                  header_style="bold")
    for col in ("layer", "parameters", "λ_max", "residual", "trace", "±", "HVPs", "seconds"):
        table.add_column(col, justify="left" if col == "layer" else "right")
    for row in result.rows:
        tr = row.trace
        table.add_row(row.name, f"{row.numel:,}", f"{float(row.top.eigenvalues[0]):.6g}",
                      f"{float(row.top.residuals[0]):.1e}", "" if tr is None else f"{tr.estimate:.6g}",
                      "" if tr is None else f"{tr.stderr:.2g}", str(row.hvps), f"{row.seconds:.2f}")
    table.caption = "diagonal Hessian blocks: each layer's curvature with the others fixed (cross-layer terms excluded)"
    return table


def emit(report: ProbeReport, title: str, as_json: bool, extra: dict[str, Any]) -> None:
    """Print the report: one JSON object (with ``extra``) or the tables."""
    if as_json:
        payload = {**report.to_dict(), **extra}
        sys.stdout.write(json.dumps(payload) + "\n")
    else:
        out.print(report_table(report, title))
        if report.per_layer is not None:
            out.print(layers_table(report.per_layer))


def lanczos_block(text: str | None) -> int | Literal["auto"] | None:
    """``--block``: None, ``"auto"`` or a positive integer."""
    if text is None:
        return None
    if text == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        from sharpscope.errors import ConfigError

        raise ConfigError(f"block must be an integer or auto, got {text!r}", argument="block") from None


@app.command("probe")
@clean_errors
def probe_cmd(
    ctx: typer.Context,
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint: .safetensors, or .pt/.pth/.ckpt (loaded weights-only).")],
    data: Annotated[str, typer.Option(help="mnist1d, cifar10:DIR_OR_NPZ, cifar100:DIR, mnist:NPZ, npz:PATH (arrays x, y) or text:PATH (64-byte windows, next-byte targets).")],
    n: Annotated[int | None, typer.Option(help="Keep the first N examples as the probe set.")] = None,
    model: Annotated[str | None, typer.Option(help=MODEL_HELP)] = None,
    loss: Annotated[Loss | None, typer.Option(help=LOSS_HELP, show_default=False)] = None,
    k: Annotated[int, typer.Option(help="Number of top eigenvalues.")] = 1,
    negative: Annotated[bool, typer.Option("--negative", help="Also the most negative eigenvalue.")] = False,
    trace: Annotated[bool, typer.Option("--trace", help="Estimate the Hessian trace.")] = False,
    density: Annotated[bool, typer.Option("--density", help="Spectral density by stochastic Lanczos quadrature.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")] = False,
    bn: Annotated[BN, typer.Option(help="BatchNorm: eval (running stats) or batch (stats of each fixed batch).")] = BN.eval,
    batch_size: Annotated[int, typer.Option(help="Examples per batch in each product (memory).")] = 1000,
    tol: Annotated[float, typer.Option(help="Lanczos stops when the relative Ritz residual (or, with --stop eigenvalue, the estimated relative eigenvalue error) is below this.")] = 1e-3,
    stop: Annotated[Stop, typer.Option(help="What --tol bounds: residual (eigenvalue and eigenvector) or eigenvalue (error bound r²/gap: fewer products, can stop early inside a near-degenerate pair).")] = Stop.residual,
    max_iter: Annotated[int | None, typer.Option(help="Lanczos step limit (default max(100, 20k)).")] = None,
    trace_method: Annotated[TraceMethod, typer.Option(help="Trace estimator.")] = TraceMethod.hutchpp,
    trace_matvecs: Annotated[int, typer.Option(help="HVP budget of the trace estimate.")] = 99,
    density_steps: Annotated[int, typer.Option(help="Lanczos steps per SLQ run.")] = 90,
    density_runs: Annotated[int, typer.Option(help="SLQ runs.")] = 10,
    density_tol: Annotated[float | None, typer.Option(help="Stop each SLQ run once, for two steps running, its smoothed density moves by at most this (L1) and its extreme nodes by at most this many kernel widths; --density-steps becomes a cap. Default: fixed steps.")] = None,
    hvp_mode: Annotated[HVPMode, typer.Option(help="Hessian-vector product: auto picks the faster exact mode.")] = HVPMode.auto,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto.")] = "auto",
    dtype: Annotated[ProbeDType, typer.Option(help="The weights' dtype (bfloat16: see --weight-precision).")] = ProbeDType.float32,
    weight_precision: Annotated[WeightPrecision, typer.Option(help="bfloat16 weights: upcast computes on float32 copies (exact products); native keeps bfloat16 and takes finite-difference products (double backward with --cache-graphs), their error against a float32 copy measured once and reported.")] = WeightPrecision.upcast,
    precision: Annotated[ProductPrecision, typer.Option(help="Product arithmetic: strict float32, tf32 (CUDA TF32 matmuls, about 1e-3 relative error) or bf16 (bfloat16 autocast). Anything but strict measures its deviation from a strict product once and reports it.")] = ProductPrecision.strict,
    compile_products: Annotated[bool, typer.Option("--compile", help="torch.compile the forward-over-reverse product (compiling takes tens of seconds; the deviation from eager products is reported).")] = False,
    block: Annotated[str | None, typer.Option(help="Block Lanczos with this many vectors per step (an integer, or auto: k capped at 8 and at least 2); default single-vector.")] = None,
    guards: Annotated[int, typer.Option(help="Ritz pairs beyond the wanted ones that Lanczos must locate (relative residual below max(tol, 0.01)) before it stops, so that an extreme eigenvalue it has not found yet is not passed over; 0 for the plain rule.")] = 1,
    memory_budget: Annotated[str | None, typer.Option(help="Vectors the algorithms may hold: '24 vectors' or a size such as 8GiB. Default: half the free memory. Lanczos restarts within it, SLQ runs in chunks or with local re-orthogonalisation, Hutch++ shrinks its sketch; the strategy and peak bytes are in the JSON's settings.memory.")] = None,
    basis_location: Annotated[BasisLocation, typer.Option(help="Where Lanczos keeps its Krylov basis: device (beside the model) or host (pinned host memory beside a GPU model).")] = BasisLocation.device,
    cache_graphs: Annotated[bool | None, typer.Option("--cache-graphs/--no-cache-graphs", help="Keep every batch's gradient graph between products (double backward; faster, needs the memory of all batches). Default: automatic, when the graphs fit in half the free memory.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of every random vector.")] = 0,
    per_layer: Annotated[bool, typer.Option("--per-layer", help="Also top eigenvalues (and trace, with --trace) of each layer's diagonal Hessian block.")] = False,
    layer_depth: Annotated[int | None, typer.Option(help="With --per-layer: group by the first N components of the module path (blocks) instead of by module.")] = None,
    unsafe_load: Annotated[bool, typer.Option("--unsafe-load", help="Allow pickles that run code when loaded. Only for files you trust.")] = False,
    operator: Annotated[Operator, typer.Option(help="Matrix to measure: hessian, ggn (generalised Gauss-Newton) or ef (empirical Fisher).")] = Operator.hessian,
    shard: Annotated[Shard, typer.Option(help="Under torchrun: data keeps the whole model on every rank and splits the probe set; fsdp also shards the parameters (fully_shard per block) and takes finite-difference Hessian products on sharded vectors, so memory per rank falls with the ranks.")] = Shard.data,
    sharpness: Annotated[str | None, typer.Option(help="Also these sharpness measures, a comma list of worst (max loss rise within --rho, by projected gradient ascent), average (mean loss rise under random perturbations of size --rho), keskar (Keskar et al.'s epsilon-sharpness), pacbayes (largest sigma of Gaussian noise raising the loss by --pacbayes-target; reported as 1/sigma^2), jacobian (mean squared norm of per-example output Jacobians), ggn (Gauss-Newton trace). Each reads the options below that name it (an option that no listed measure reads is refused); defaults and their reasons in docs/measures.md.")] = None,
    rho: Annotated[float, typer.Option(help="Radius of the worst/average sharpness perturbation.")] = 0.05,
    sharpness_norm: Annotated[SharpnessNorm, typer.Option(help="Norm of the worst/average sharpness perturbation: l2 (ball; Gaussian for average) or linf (box; uniform for average).")] = SharpnessNorm.l2,
    adaptive: Annotated[bool, typer.Option("--adaptive/--no-adaptive", help="Scale perturbations elementwise by |w| (worst, average, pacbayes): invariant to rescaling ReLU layers.")] = False,
    m: Annotated[int | None, typer.Option(help="m-sharpness: worst/average sharpness on batches of M examples, averaged (standard error over the batches).")] = None,
    ascent_steps: Annotated[int, typer.Option(help="worst, keskar: projected gradient ascent steps per run (the JSON's convergence.last_gain says whether the ascent settled).")] = 20,
    restarts: Annotated[int, typer.Option(help="worst, keskar: ascent runs; the first starts from the gradient direction, the others from random points of the set.")] = 1,
    sharpness_samples: Annotated[int, typer.Option(help="average, pacbayes: antithetic Monte-Carlo pairs (+z, -z) per estimate (standard error about 1/sqrt of it).")] = 32,
    pacbayes_target: Annotated[float, typer.Option(help="pacbayes: the expected loss increase that defines sigma.")] = 0.1,
    pacbayes_tol: Annotated[float, typer.Option(help="pacbayes: bisection stops when the bracket on sigma is narrower than this times sigma.")] = 0.01,
    keskar_epsilon: Annotated[float, typer.Option(help="keskar: the box |delta_i| <= epsilon (|w_i| + 1).")] = 1e-3,
    output_trace: Annotated[OutputTrace, typer.Option(help="jacobian, ggn: exact (one backward pass per output) or a stochastic estimator (hutchinson, hutch++) with --output-trace-matvecs products.")] = OutputTrace.exact,
    output_trace_matvecs: Annotated[int, typer.Option(help="jacobian, ggn with a stochastic --output-trace: products per estimate.")] = 99,
    output_trace_block: Annotated[int, typer.Option(help="jacobian, ggn: vectors per vectorised pass (memory: that many parameter-sized vectors).")] = 32,
    out_file: Annotated[Path | None, typer.Option("--out", help="Also write the JSON result to FILE (with --density, the figure to FILE-density.png/.pdf/.json).")] = None,
    eigenvectors: Annotated[Path | None, typer.Option("--eigenvectors", help="Save the top eigenvectors to FILE (.safetensors).")] = None,
) -> None:
    """Top eigenvalues, trace and spectral density of the loss Hessian (or GGN, empirical Fisher) at a checkpoint (optionally per layer)."""
    import torch
    from sharpscope_cli.probe_outputs import check_outputs, density_text, write_outputs

    from sharpscope.curvature import CurvatureSettings
    from sharpscope.data import resolve_data
    from sharpscope.errors import SharpscopeError
    from sharpscope.losses import get_loss
    from sharpscope.parallel import init_distributed, rank, resolve_device, shard_dataset, sharding
    from sharpscope.probe import ProbeSettings, probe

    dev = resolve_device(device)
    torch_dtype = getattr(torch, dtype.value)
    curvature = CurvatureSettings(k=k, tol=tol, max_iter=max_iter, stop=stop.value, trace_method=trace_method.value,
                                  trace_matvecs=trace_matvecs, bn=bn.value, hvp_mode=hvp_mode.value,
                                  precision=precision.value, compile=compile_products, block=lanczos_block(block),
                                  cache_graphs="auto" if cache_graphs is None else cache_graphs, guards=guards,
                                  memory_budget=memory_budget, basis_location=basis_location.value,
                                  weight_precision=weight_precision.value)
    settings = ProbeSettings(curvature=curvature, negative=negative, trace=trace, density=density,
                             density_steps=density_steps, density_runs=density_runs, density_tol=density_tol,
                             batch_size=batch_size, seed=seed,
                             per_layer=per_layer, layer_depth=layer_depth, operator=operator.value, shard=shard.value,
                             sharpness=() if sharpness is None else tuple(n.strip() for n in sharpness.split(",")),
                             sharpness_settings=sharpness_settings(
                                 rho=rho, norm=sharpness_norm.value, adaptive=adaptive, m=m, steps=ascent_steps,
                                 restarts=restarts, samples=sharpness_samples, target=pacbayes_target, tol=pacbayes_tol,
                                 epsilon=keskar_epsilon, trace=output_trace.value, matvecs=output_trace_matvecs,
                                 block=output_trace_block))
    check_sharpness_flags(given_sharpness_fields(ctx), settings.sharpness)
    check_outputs(out_file, eigenvectors, density)
    if n is not None and n < 1:
        raise SharpscopeError(f"--n must be positive, got {n}")
    dev = init_distributed(dev)  # under torchrun: each rank probes its shard; the sums run across ranks
    loss_name = default_loss(None if loss is None else loss.value, model)
    loaded = load_model(checkpoint, model, unsafe_load)
    dataset = resolve_data(data, n=n)
    part = shard_dataset(dataset)
    net = loaded.to(device=dev, dtype=torch_dtype)
    check_fits(net, loss_name, part.x.to(dev), part.y.to(dev), model=model, data=data)
    with progress(unit="HVPs", bar=not as_json and err.is_terminal and rank() == 0,
                  lines=not err.is_terminal and rank() == 0) as bar:
        report = probe(net, get_loss(loss_name), part.x.to(dev), part.y.to(dev), settings, progress=bar)
    extra = {"checkpoint": str(checkpoint), "data": dataset.name, "loss_fn": loss_name}
    report.settings.update(extra, sharding=sharding(len(dataset)))
    if rank() == 0:
        for note in cast(list[str], report.settings.get("notes") or []):
            err.print(f"note: {note}", highlight=False, markup=False, soft_wrap=True)
        emit(report, f"{checkpoint.name} on {dataset.name} ({loss_name} loss)", as_json, extra)
        if report.density is not None and not as_json:
            out.print(density_text(report.density), highlight=False, markup=False, soft_wrap=True)
        for path in write_outputs(report, {**report.to_dict(), **extra}, net, out=out_file, eigenvectors=eigenvectors,
                                  command=["sharpscope", *sys.argv[1:]]):
            if not as_json:
                err.print(f"wrote {path}", highlight=False)


@app.command()
@clean_errors
def demo(
    steps: Annotated[int, typer.Option(help="SGD steps (1,500 take a few seconds on two cores).")] = 1500,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Keep the checkpoint here (default: a temporary folder).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")] = False,
    seed: Annotated[int, typer.Option(help="Seed for training and probing.")] = 0,
) -> None:
    """Train a small MLP on MNIST-1D (generated offline) for a few seconds, save it, and probe it:
    top eigenvalue and Hessian trace, with their residual, standard error and cost."""
    from sharpscope.demo import check_demo, train_demo_model
    from sharpscope.io import load_checkpoint, save_checkpoint
    from sharpscope.losses import get_loss
    from sharpscope.probe import ProbeSettings, probe

    check_demo(steps, seed)  # a step budget over the limit is refused with an estimate of its time
    if not as_json:
        err.print(f"training an MLP on MNIST-1D for {steps} steps ...")
    run = train_demo_model(steps, seed=seed)
    folder = out_dir or Path(tempfile.mkdtemp(prefix="sharpscope-demo-"))
    path = save_checkpoint(folder / "demo.safetensors", run.model, spec=run.spec,
                           extra={"steps": run.steps, "train_accuracy": run.train_accuracy})
    loaded = load_checkpoint(path)
    settings = ProbeSettings(trace=True, batch_size=None, seed=seed)
    with progress(unit="HVPs", bar=not as_json and err.is_terminal, lines=not err.is_terminal) as bar:
        report = probe(loaded.model, get_loss("ce"), run.data.x, run.data.y, settings, progress=bar)
    extra = {"checkpoint": str(path), "data": run.data.name, "loss_fn": "ce", "train_steps": run.steps,
             "train_accuracy": run.train_accuracy}
    report.settings.update(extra)
    emit(report, f"MLP after {run.steps} SGD steps on MNIST-1D (train accuracy {run.train_accuracy:.1%})",
         as_json, extra)
    if not as_json:
        # soft_wrap: a narrow terminal must not break the command in two where it is copied from
        err.print(f"checkpoint: {path}\nprobe it again: sharpscope probe {path} --data mnist1d --k 5 --trace",
                  soft_wrap=True)


from sharpscope_cli.landscape import landscape_cmd  # noqa: E402  (each command in its own module)
from sharpscope_cli.plot import plot_cmd  # noqa: E402
from sharpscope_cli.reproduce import reproduce_cmd  # noqa: E402
from sharpscope_cli.train import train_cmd  # noqa: E402
from sharpscope_cli.verify import verify_cmd  # noqa: E402

for _name, _command in (("train", train_cmd), ("landscape", landscape_cmd), ("reproduce", reproduce_cmd),
                        ("plot", plot_cmd), ("verify", verify_cmd)):
    app.command(_name)(clean_errors(_command))

if __name__ == "__main__":
    app()
