"""SLQ spectral densities on the demo MLP: seconds, products and L1 density error, side by side.

The model is ``sharpscope demo``'s MLP (MNIST-1D, 15,210 parameters, trained for ``--train-steps``
SGD steps); the objective is its mean cross-entropy over the 4,000 training examples in batches of
1,000, the operator ``HessianOperator`` at its defaults (what ``probe`` uses). Two references of
``--runs`` × ``--ref-steps`` steps are computed: one from the same random starts as every
candidate (seed ``--seed``), so the distance to it is the candidates' truncation error alone, and
one from independent starts (seed ``--seed + 1``), so the distance to it also holds the sampling
error of the random starts, which the distance between the two references shows. Every density is
smoothed with the reference's kernel (same absolute width) and compared in L1 on one grid of
spacing σ/4 reaching 8σ beyond the reference's extreme nodes.

Candidates: today's default (``--runs`` × ``--default-steps`` = 90 fixed steps), the adaptive rule at each ``--tols``
(capped at ``--ref-steps``), and cheaper fixed settings (``--cheap``, e.g. ``10x60``). Each is
timed ``--repeats`` times, round robin (the least wall and the least CPU seconds are kept: with one
thread, process CPU time is the cost least disturbed by other work on a shared machine). First,
the price of a lockstep block: one ``(dim, runs)``
product against ``runs`` single products, for each product mode.

    OMP_NUM_THREADS=1 python benchmarks/bench_density.py --out benchmarks/results/density_cpu

All timings come from this one process on the same objective: ratios, not absolute seconds, are
the result on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from sharpscope import ConvergenceWarning, DensityResult, HessianOperator, Objective, slq_density
from sharpscope.curvature.results import gaussian_density
from sharpscope.demo import train_demo_model


def block_price(objective: Objective, runs: int, repeats: int) -> list[dict[str, object]]:
    """CPU seconds (least of ``repeats``) of one ``(dim, runs)`` product and of ``runs`` single products,
    per product mode."""
    rows = []
    V = torch.randn(objective.dim, runs, generator=torch.Generator().manual_seed(0), dtype=objective.dtype)
    for mode, cache in (("fwd-rev", False), ("rev-rev", False), ("rev-rev", True)):
        op = HessianOperator(objective, mode=mode, cache_graphs=cache)
        op.matmat(V)  # warm-up (and the graph cache)
        block, single = [], []
        for _ in range(repeats):
            start = time.process_time()
            op.matmat(V)
            block.append(time.process_time() - start)
            start = time.process_time()
            for i in range(runs):
                op.matvec(V[:, i])
            single.append(time.process_time() - start)
        b, s = min(block), min(single)
        rows.append({"mode": mode, "graph_cache": cache, "block_cpu_seconds": b, "singles_cpu_seconds": s,
                     "speedup": s / b})
    return rows


class Grid:
    """The reference's kernel on one fine grid, and L1 distances on it."""

    def __init__(self, reference: DensityResult) -> None:
        self.width = reference.sigma2
        sigma = math.sqrt(self.width)
        used = reference.weights > 0
        lo, hi = float(reference.nodes[used].min()), float(reference.nodes[used].max())
        self.grid = torch.arange(lo - 8 * sigma, hi + 8 * sigma, sigma / 4, dtype=torch.float64)

    def density(self, result: DensityResult) -> torch.Tensor:
        return torch.cat([gaussian_density(result.nodes, result.weights, chunk, self.width)
                          for chunk in self.grid.split(2048)])

    def l1(self, f: torch.Tensor, g: torch.Tensor) -> float:
        return float((f - g).abs().sum()) * float(self.grid[1] - self.grid[0])


def candidates(args: argparse.Namespace) -> dict[str, Callable[[HessianOperator], DensityResult]]:
    out: dict[str, Callable[[HessianOperator], DensityResult]] = {
        f"default {args.runs}x{args.default_steps}": lambda op: slq_density(op, args.default_steps, args.runs,
                                                                            seed=args.seed)}
    for tol in args.tols:
        out[f"adaptive tol={tol:g}"] = (
            lambda op, tol=tol: slq_density(op, args.ref_steps, args.runs, seed=args.seed, tol=tol))
    for spec in args.cheap:
        runs, steps = (int(v) for v in spec.split("x"))
        out[f"fixed {runs}x{steps}"] = lambda op, runs=runs, steps=steps: slq_density(op, steps, runs, seed=args.seed)
    return out


def run(args: argparse.Namespace) -> dict[str, object]:
    torch.set_num_threads(args.threads)
    demo = train_demo_model(args.train_steps, seed=0)
    objective = Objective(demo.model, nn.CrossEntropyLoss(), (demo.data.x, demo.data.y), batch_size=1000)
    prices = block_price(objective, args.runs, 2 * args.repeats + 1)
    op = HessianOperator(objective)
    op.matmat(torch.randn(objective.dim, args.runs, dtype=objective.dtype))  # mode and cache chosen here, not billed
    reference = slq_density(op, args.ref_steps, args.runs, seed=args.seed)
    independent = slq_density(op, args.ref_steps, args.runs, seed=args.seed + 1)
    grid = Grid(reference)
    ref_same, ref_other = grid.density(reference), grid.density(independent)
    fns = candidates(args)
    wall: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    last: dict[str, tuple[DensityResult, list[str]]] = {}
    for _ in range(args.repeats):  # round robin, so a burst of load on the shared machine hits every setting
        for name, fn in fns.items():
            start = time.process_time()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ConvergenceWarning)
                result = fn(op)
            cpu[name].append(time.process_time() - start)
            wall[name].append(result.seconds)
            last[name] = (result, [str(w.message) for w in caught])
    rows: list[dict[str, object]] = []
    for name, (result, warned) in last.items():
        f = grid.density(result)
        rows.append({"setting": name, "seconds": min(wall[name]), "seconds_all": wall[name],
                     "cpu_seconds": min(cpu[name]), "cpu_seconds_all": cpu[name],
                     "hvps": result.hvps, "run_steps": result.settings["run_steps"],
                     "settled_runs": result.settings.get("settled_runs"), "warned": warned,
                     "l1_truncation": grid.l1(f, ref_same), "l1_vs_independent": grid.l1(f, ref_other),
                     "density_error": result.density_error,
                     "trace": result.trace, "trace_stderr": result.trace_stderr})
    base = rows[0]
    for row in rows:
        row["seconds_ratio"] = float(base["seconds"]) / float(row["seconds"])  # type: ignore[arg-type]
        row["cpu_seconds_ratio"] = float(base["cpu_seconds"]) / float(row["cpu_seconds"])  # type: ignore[arg-type]
        row["hvps_ratio"] = int(base["hvps"]) / int(row["hvps"])  # type: ignore[call-overload]
    return {
        "model": f"demo MLP ({objective.dim:,} parameters, {args.train_steps} SGD steps, train accuracy "
                 f"{demo.train_accuracy:.1%})", "examples": len(demo.data), "operator": op.describe(),
        "reference": {"runs": args.runs, "steps": args.ref_steps, "seconds": reference.seconds,
                      "hvps": reference.hvps, "kernel_variance": grid.width,
                      "density_error": [reference.density_error, independent.density_error],
                      "extremes": [float(grid.grid[0]), float(grid.grid[-1])],
                      "l1_between_references": grid.l1(ref_same, ref_other)},
        "block_price": prices, "rows": rows,
        "machine": {"torch": torch.__version__, "threads": torch.get_num_threads(), "python": platform.python_version(),
                    "processor": platform.processor() or platform.machine()},
        "command": " ".join(["python benchmarks/bench_density.py", *args.argv]),
    }


def markdown(result: dict) -> str:
    ref = result["reference"]
    lines = [f"# SLQ density on the {result['model']}", "",
             f"`{result['command']}` (torch {result['machine']['torch']}, {result['machine']['threads']} thread). "
             f"Products: {result['operator']['hvp_mode']}, graph cache {result['operator']['cache_graphs']}.", "",
             "## Price of a lockstep block", "",
             "| mode | graph cache | one (dim, r) product, CPU s | r single products, CPU s | speed-up |",
             "|---|---|---|---|---|"]
    for p in result["block_price"]:
        lines.append(f"| {p['mode']} | {p['graph_cache']} | {p['block_cpu_seconds']:.3f} | {p['singles_cpu_seconds']:.3f} "
                     f"| {p['speedup']:.2f}× |")
    lines += ["", f"## Densities against a {ref['runs']} × {ref['steps']}-step reference", "",
              f"Kernel variance σ² = {ref['kernel_variance']:.3g} (the reference's). Reference: {ref['seconds']:.1f} s, "
              f"{ref['hvps']} products. L1 between the reference and one from independent starts (the sampling "
              f"error of {ref['runs']} starts): {ref['l1_between_references']:.4f}; each reference's own estimate of "
              f"its sampling error (`density_error`): {ref['density_error'][0]:.4f} and {ref['density_error'][1]:.4f}.",
              "",
              "| setting | wall s | CPU s | products | steps per run | L1 vs same-start reference (truncation) "
              "| L1 vs independent-start reference | density_error | CPU-seconds ratio | products ratio |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        steps = r["run_steps"]
        span = f"{min(steps)}–{max(steps)}" if min(steps) != max(steps) else str(steps[0])
        note = " (unsettled runs)" if r["warned"] else ""
        lines.append(f"| {r['setting']}{note} | {r['seconds']:.2f} | {r['cpu_seconds']:.2f} | {r['hvps']} | {span} "
                     f"| {r['l1_truncation']:.4f} | {r['l1_vs_independent']:.4f} | {r['density_error']:.4f} "
                     f"| {r['cpu_seconds_ratio']:.2f}× "
                     f"| {r['hvps_ratio']:.2f}× |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-steps", type=int, default=1500)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--ref-steps", type=int, default=200)
    parser.add_argument("--default-steps", type=int, default=90, help="steps of today's default setting")
    parser.add_argument("--tols", type=float, nargs="*", default=[0.03, 0.01, 0.003])
    parser.add_argument("--cheap", nargs="*", default=["10x60", "10x45", "5x90"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="write OUT.json and OUT.md")
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else __import__("sys").argv[1:]
    result = run(args)
    text = markdown(result)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).with_suffix(".json").write_text(json.dumps(result, indent=1, default=str))
        Path(args.out).with_suffix(".md").write_text(text)
    return result


if __name__ == "__main__":
    main()
