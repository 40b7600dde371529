"""Error of the sharded operator's finite-difference product against the exact product, by step size.

One process, the GPT-2-style model of ``bench_sharded.py`` (float32, randomly initialised) on byte
tokens. For each step ``h`` the central difference ``(∇L(θ + h v̂) − ∇L(θ − h v̂)) / 2h`` is compared
with the exact (double-backward) product along two unit directions: a random Gaussian one and the top
eigenvector (from Lanczos on the exact operator), the direction λ_max is made of. The rows include
the default ``h = √ε`` and the rule it replaced, ``ε^{1/3} · max(1, ‖θ‖)``. Last, a Hutchinson trace
from the same 16 sharded draws with finite-difference and with exact products: how much of a trace's
difference between the two operators is the product rather than the draws.

    python benchmarks/bench_fd_step.py --out benchmarks/results/fd_step_cpu
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sharded import data, gpt, model_arguments  # noqa: E402

from sharpscope import HessianOperator, Objective, hutchinson, lanczos  # noqa: E402
from sharpscope.curvature import ShardedHessianOperator  # noqa: E402
from sharpscope.losses import token_cross_entropy  # noqa: E402


def sweep(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device("cpu")
    model = gpt(args, device)
    x, y = data(args, device)
    exact = HessianOperator(Objective(model, token_cross_entropy, (x, y), batch_size=args.batch_size),
                            mode="rev-rev", cache_graphs=False)
    top = lanczos(exact, 1, tol=1e-6, seed=0)
    random = torch.randn(exact.dim, generator=torch.Generator().manual_seed(1))
    directions = {"random": random / random.norm(), "top eigenvector": top.eigenvectors[:, 0].float()}
    targets = {name: exact.matvec(v) for name, v in directions.items()}
    eps = float(torch.finfo(torch.float32).eps)
    theta = float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())
    steps = {"ε^(1/3)·max(1, ‖θ‖) (earlier rule)": eps ** (1 / 3) * max(1.0, theta),
             "1e-2": 1e-2, "1e-3": 1e-3, "√ε (default)": math.sqrt(eps), "1e-4": 1e-4, "1e-5": 1e-5}
    rows = []
    for label, h in steps.items():
        op = ShardedHessianOperator(Objective(model, token_cross_entropy, (x, y), batch_size=args.batch_size,
                                              validate=False), step=h)
        row: dict[str, Any] = {"step": label, "h": h}
        for name, v in directions.items():
            got = op.matvec(v)
            row[name] = float((got - targets[name]).norm() / targets[name].norm())
            if name == "top eigenvector":
                row["rayleigh"] = float(v @ got)
        rows.append(row)
    fd = ShardedHessianOperator(Objective(model, token_cross_entropy, (x, y), batch_size=args.batch_size,
                                          validate=False))
    by_fd = hutchinson(fd, 16, seed=1, block_size=4)
    exact.draw_columns = fd.draw_columns  # type: ignore[method-assign]  # the sharded operator's draws
    by_exact = hutchinson(exact, 16, seed=1, block_size=4)
    trace = {"fd": by_fd.estimate, "exact": by_exact.estimate, "stderr": by_exact.stderr}
    return {"trace_same_draws": trace, "parameters": exact.dim, "lambda_max": float(top.eigenvalues[0]), "theta_norm": theta, "rows": rows,
            "torch": torch.__version__}


def markdown(result: dict[str, Any], command: str) -> str:
    lines = [f"# Finite-difference product error by step ({result['parameters']:,}-parameter GPT-2-style model, "
             "float32, CPU)", "", f"`{command}` — torch {result['torch']}. λ_max (exact products) "
             f"{result['lambda_max']:.5g}; ‖θ‖ = {result['theta_norm']:.4g}.", "",
             "| step rule | h | relative error, random direction | relative error, top eigenvector | "
             "vᵀHv along the top eigenvector |", "|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['step']} | {r['h']:.3g} | {r['random']:.2e} | {r['top eigenvector']:.2e} | "
                     f"{r['rayleigh']:.5g} |")
    t = result["trace_same_draws"]
    lines += ["", f"Hutchinson trace from the same 16 draws: finite differences {t['fd']:.6g}, exact products "
              f"{t['exact']:.6g} (relative difference {abs(t['fd'] - t['exact']) / abs(t['exact']):.1e}; the estimate's "
              f"standard error is {t['stderr']:.3g})."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    model_arguments(parser)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    result = sweep(args)
    command = "python benchmarks/bench_fd_step.py " + " ".join(sys.argv[1:])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({**result, "command": command}, indent=1))
    args.out.with_suffix(".md").write_text(markdown(result, command))
    print(markdown(result, command))


if __name__ == "__main__":
    main()
