"""SLQ with local against full re-orthogonalisation: the L1 distance between the two smoothed densities
from the same random starts (so the difference is the loss of orthogonality alone), next to the
sampling error of the runs, on the demo MLP (MNIST-1D, 15,210 parameters, ``--train-steps`` SGD steps)
and on a synthetic spectrum (a bulk on [0, 1] under outliers 10, 7, 5; dimension 2,000, float64).

    OMP_NUM_THREADS=1 python benchmarks/bench_reorth.py --out benchmarks/results/reorth_cpu
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sharpscope import HessianOperator, MatrixOperator, Objective, slq_density
from sharpscope.curvature.operators.linear_operator import LinearOperator
from sharpscope.demo import train_demo_model


def compare(op: LinearOperator, steps: list[int], runs: int, seed: int) -> list[dict[str, Any]]:
    rows = []
    for m in steps:
        full = slq_density(op, num_steps=m, num_runs=runs, seed=seed, reorthogonalize="full")
        local = slq_density(op, num_steps=m, num_runs=runs, seed=seed, reorthogonalize="local")
        grid, width = full.grid, full.sigma2
        l1 = float(torch.trapezoid((local.smooth(width, grid) - full.density).abs(), grid))
        rows.append({"steps": m, "runs": runs, "l1_local_vs_full": l1, "sampling_error_full": full.density_error,
                     "trace_full": full.trace, "trace_local": local.trace, "trace_stderr": full.trace_stderr,
                     "seconds_full": full.seconds, "seconds_local": local.seconds})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-steps", type=int, default=1500)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--steps", default="30,90,200")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    steps = [int(s) for s in args.steps.split(",")]
    lam = torch.linspace(0.0, 1.0, 2000, dtype=torch.float64)
    lam[-3:] = torch.tensor([5.0, 7.0, 10.0], dtype=torch.float64)
    Q, _ = torch.linalg.qr(torch.randn(2000, 2000, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    result: dict[str, Any] = {"synthetic": compare(MatrixOperator((Q * lam) @ Q.T), steps, args.runs, 0)}
    run = train_demo_model(args.train_steps)
    x, y = run.data.x, run.data.y
    objective = Objective(run.model, nn.CrossEntropyLoss(), (x, y), batch_size=1000)
    result["demo MLP"] = compare(HessianOperator(objective, mode="rev-rev", cache_graphs=True), steps, args.runs, 0)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out is not None:
        args.out.with_suffix(".json").write_text(text + "\n")


if __name__ == "__main__":
    main()
