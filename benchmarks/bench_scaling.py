"""Scaling of one Hessian-vector product with the probe-set size and with data-parallel processes, on the CPU.

Setting: a 40-256-256-10 tanh MLP on MNIST-1D (generated offline), cross entropy, float32, fixed
batches of 500 examples, probe sets of the first 500, 1000, 2000 and 4000 training examples.
Each size is timed in one process and in two gloo processes (``torch.distributed``, each rank
holding a contiguous half, products summed across ranks: what ``torchrun --nproc_per_node=2
sharpscope probe`` runs). Every process uses ONE torch thread, so two processes use two cores
where one process uses one: on a two-core machine the speed-up is bounded by 2 and eaten into by
anything else running (the load average is recorded).

Two regimes: single products (Lanczos; double backward, ``rev-rev``) and probe blocks of 8
(trace and density; vmapped forward-over-reverse, ``fwd-rev``; time per probe vector). Each time is
the median over ``--repeats`` products after one warm-up, measured between barriers so the
slowest rank counts. The two-process products are checked against the one-process ones.

    python benchmarks/bench_scaling.py            # writes benchmarks/results/scaling_cpu.{json,md}
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sharpscope import HessianOperator, Objective
from sharpscope.data import resolve_data
from sharpscope.losses import cross_entropy
from sharpscope.models import build_model
from sharpscope.parallel import shard_dataset

REGIMES = {"single": ("rev-rev", 1), "block of 8": ("fwd-rev", 8)}
BATCH = 500
WIDTHS = [256, 256]


def timed_products(sizes: list[int], repeats: int) -> dict[str, object]:
    """Seconds per HVP for every size and regime, in this process (one rank or all ranks), and ``H v`` for a check."""
    torch.manual_seed(0)
    model = build_model("mlp", in_features=40, num_classes=10, widths=WIDTHS, activation="tanh")
    full = resolve_data("mnist1d", n=max(sizes))
    times: dict[str, dict[int, float]] = {name: {} for name in REGIMES}
    checks: dict[int, list[float]] = {}
    for n in sizes:
        part = shard_dataset(full.subset(n))
        objective = Objective(model, cross_entropy, (part.x, part.y), batch_size=BATCH)
        for name, (mode, block) in REGIMES.items():
            op = HessianOperator(objective, mode=mode, block_size=block)  # type: ignore[arg-type]
            V = torch.randn(objective.dim, block, generator=torch.Generator().manual_seed(1))
            out = op.matmat(V)  # warm-up
            seconds = []
            for _ in range(repeats):
                barrier()
                start = time.perf_counter()
                op.matmat(V)
                barrier()
                seconds.append((time.perf_counter() - start) / block)
            times[name][n] = statistics.median(seconds)
            if name == "single":
                checks[n] = out[:, 0].tolist()
    return {"times": times, "checks": checks, "dim": objective.dim}


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def worker(rank: int, folder: str, sizes: list[int], repeats: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=2)
    try:
        result = timed_products(sizes, repeats)
        if rank == 0:
            (Path(folder) / "result.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def relative_difference(a: list[float], b: list[float]) -> float:
    x, y = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    return float((x - y).norm() / y.norm())


def markdown(report: dict) -> str:
    lines = ["# Scaling of Hessian-vector products on the CPU", "",
             f"{report['environment']}; {report['model']} ({report['parameters']:,} parameters), batches of "
             f"{report['batch_size']}, {report['threads_per_process']} torch thread per process, median of "
             f"{report['repeats']} products; load average {report['load_average']['before']:.2f} before, "
             f"{report['load_average']['after']:.2f} after.", "",
             "Two processes use two cores where one process uses one, so the speed-up is at most 2 on a two-core "
             "machine, and less when other jobs hold cores (a load average near or above 2): then the 2-process "
             "column measures contention, not sharpscope. The last column checks that the two-process product "
             "is the one-process product (float32 rounding).", ""]
    for regime, rows in report["regimes"].items():
        mode = REGIMES[regime][0]
        lines += [f"## {regime} ({mode}; seconds per HVP)", "",
                  "| examples | 1 process | 2 processes | speed-up | 1 process, time / time at 500 | "
                  "2-process H v vs 1 process |", "|---|---|---|---|---|---|"]
        for row in rows:
            check = f"{row['relative_difference']:.1e}" if row.get("relative_difference") is not None else ""
            lines.append(f"| {row['examples']} | {row['seconds_1']:.4f} | {row['seconds_2']:.4f} | "
                         f"{row['speedup']:.2f}x | {row['size_ratio']:.2f} | {check} |")
        lines.append("")
    lines += [f"Command: `{report['command']}`", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 1000, 2000, 4000])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "scaling_cpu")
    args = parser.parse_args()
    before = os.getloadavg()[0]
    torch.set_num_threads(1)
    started = time.perf_counter()
    one = timed_products(args.sizes, args.repeats)
    with tempfile.TemporaryDirectory() as folder:
        mp.start_processes(worker, args=(folder, args.sizes, args.repeats), nprocs=2, join=True,
                           start_method="spawn")
        two = json.loads((Path(folder) / "result.json").read_text())
    regimes = {}
    for regime in REGIMES:
        t1, t2 = one["times"][regime], {int(k): v for k, v in two["times"][regime].items()}
        regimes[regime] = [{"examples": n, "seconds_1": t1[n], "seconds_2": t2[n], "speedup": t1[n] / t2[n],
                            "size_ratio": t1[n] / t1[args.sizes[0]],
                            "relative_difference": relative_difference(two["checks"][str(n)], one["checks"][n])
                            if regime == "single" else None} for n in args.sizes]
    report = {
        "environment": f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
                       f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}",
        "model": f"mlp 40-{'-'.join(map(str, WIDTHS))}-10 tanh on MNIST-1D, cross entropy, float32",
        "parameters": one["dim"], "batch_size": BATCH, "threads_per_process": 1, "repeats": args.repeats,
        "load_average": {"before": before, "after": os.getloadavg()[0]},
        "seconds_total": time.perf_counter() - started, "regimes": regimes,
        "command": "python benchmarks/bench_scaling.py " + " ".join(
            [f"--sizes {' '.join(map(str, args.sizes))}", f"--repeats {args.repeats}"]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
