"""Curvature of a model sharded with FSDP2 over 2 and 4 ranks against one process.

A GPT-2-style language model of a few million parameters (built from its config by ``transformers``,
randomly initialised; nothing is downloaded) on byte tokens of a standard-library source file. One
process measures it with exact (double-backward) products; ``W`` gloo ranks on the CPU shard it with
``fully_shard`` per transformer block and measure it with finite-difference products on sharded
vectors, each rank holding ``1/W`` of the examples. Stages, each with seconds, products and the peak
resident memory of every rank (sampled every 0.1 s):

1. the finite-difference product's relative error against the exact product on one random vector
   (one process, where both exist), and the operator's own estimate of it (step ``h`` against ``2h``);
2. λ_max (Lanczos, k = 1, tol 1e-3);
3. a Hutchinson trace with ``--trace-matvecs`` probes, ± its standard error;
4. an SLQ density (``--density-runs`` runs of ``--density-steps`` steps).

    python benchmarks/bench_sharded.py --ranks 2 4 --out benchmarks/results/sharded_cpu

All ranks share this machine's cores, so seconds here measure overhead, not speed-up; memory per rank
is the point (each rank holds ``1/W`` of the parameters and of every vector). ``--tiny`` is the test
size. ``--device cuda`` (one GPU per rank, NCCL; peak memory is then each GPU's peak allocation) is
the variant for a machine with as many GPUs as the largest ``--ranks``; ``--layers`` and ``--width``
size the model (GPT-2 small is ``--layers 12 --width 768 --vocab 50257``):

    python benchmarks/bench_sharded.py --device cuda --ranks 2 4 --layers 12 --width 768 --vocab 50257 \
        --seqs 32 --seq-len 256 --out benchmarks/results/sharded_gpu
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_large import peak_rss  # noqa: E402

from sharpscope import HessianOperator, Objective, hutchinson, lanczos, slq_density  # noqa: E402
from sharpscope.curvature import ShardedHessianOperator, shard_per_block  # noqa: E402
from sharpscope.data.text import byte_tokens  # noqa: E402
from sharpscope.losses import token_cross_entropy  # noqa: E402
from sharpscope.parallel import shard_bounds  # noqa: E402


class Logits(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids).logits


def gpt(args: argparse.Namespace, device: torch.device) -> nn.Module:
    import transformers

    layers, width = (2, 32) if args.tiny else (args.layers, args.width)
    config = transformers.GPT2Config(n_layer=layers, n_embd=width, n_head=max(2, width // 64), vocab_size=args.vocab,
                                     n_positions=max(64, args.seq_len), bos_token_id=0, eos_token_id=0)
    torch.manual_seed(args.seed)
    return Logits(transformers.AutoModelForCausalLM.from_config(config)).eval().to(device)


def model_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that choose the GPT-2 model and its token batches (shared with bench_fd_step)."""
    parser.add_argument("--tiny", action="store_true", help="a 2-layer, 32-wide model (for a smoke run)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=256, help="byte tokens index the first 256 entries")
    parser.add_argument("--seqs", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)


def data(args: argparse.Namespace, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = byte_tokens(Path(textwrap.__file__).read_bytes(), seq_len=args.seq_len)
    return x[: args.seqs].to(device), y[: args.seqs].to(device)


def peak_memory(row: dict[str, Any], device: torch.device) -> None:
    """On a GPU, the peak allocation since the last reset replaces the resident set of the host process."""
    if device.type == "cuda":
        row["peak_rss_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        torch.cuda.reset_peak_memory_stats(device)


def stages(op: Any, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """λ_max, trace and density on ``op``, each with products, seconds and peak RSS."""
    out: dict[str, Any] = {}
    for name, fn in (("lambda_max", lambda: lanczos(op, 1, tol=1e-3, seed=0)),
                     ("trace", lambda: hutchinson(op, args.trace_matvecs, seed=1, block_size=4)),
                     ("density", lambda: slq_density(op, args.density_steps, args.density_runs, seed=2))):
        row: dict[str, Any] = {}
        start = time.perf_counter()
        with peak_rss(row):
            result = fn()
        row["seconds"] = round(time.perf_counter() - start, 2)
        peak_memory(row, device)
        row["hvps"] = result.hvps
        if name == "lambda_max":
            row.update(value=float(result.eigenvalues[0]), residual=float(result.residuals[0]),
                       memory=result.settings["memory"]["strategy"])
        elif name == "trace":
            row.update(value=result.estimate, stderr=result.stderr)
        else:
            row.update(value=result.trace, stderr=result.trace_stderr, top_node=float(result.nodes.max()))
        out[name] = row
    return out


def one_process(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device("cuda:0" if args.device == "cuda" else "cpu")
    model = gpt(args, device)
    x, y = data(args, device)
    exact = HessianOperator(Objective(model, token_cross_entropy, (x, y), batch_size=args.batch_size),
                            mode="rev-rev", cache_graphs=False)
    fd = ShardedHessianOperator(Objective(model, token_cross_entropy, (x, y), batch_size=args.batch_size,
                                          validate=False))
    v = torch.randn(exact.dim, generator=torch.Generator().manual_seed(0)).to(device)
    a, b = exact.matvec(v), fd.matvec(v)
    row: dict[str, Any] = {"parameters": exact.dim, "tokens": int(x.numel()),
                           "fd_error_vs_exact": float((a - b).norm() / a.norm()),
                           "fd_error_estimate": fd.estimate_error(), "fd_step": fd.step}
    row["exact"] = stages(exact, args, device)
    return row


def rank_entry(rank: int, world: int, folder: str, args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    device = torch.device(f"cuda:{rank}" if args.device == "cuda" else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=f"file://{folder}/rendezvous-{world}",
                            rank=rank, world_size=world)
    try:
        model = shard_per_block(gpt(args, device))
        x, y = data(args, device)
        lo, hi = shard_bounds(x.shape[0], world, rank)
        op = ShardedHessianOperator(Objective(model, token_cross_entropy, (x[lo:hi], y[lo:hi]),
                                              batch_size=args.batch_size, validate=False))
        row: dict[str, Any] = {"local_dim": op.dim, "global_dim": op.global_dim, "sequences": hi - lo,
                               "fd_error_estimate": op.estimate_error()}
        row.update(stages(op, args, device))
        row["largest_vector_allocated"] = max(op.lengths_created)
        (Path(folder) / f"w{world}-rank{rank}.json").write_text(json.dumps(row))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def markdown(result: dict[str, Any], command: str) -> str:
    single = result["one_process"]
    lines = [f"# Curvature of a sharded GPT-2-style model ({single['parameters']:,} parameters, "
             f"{single['tokens']:,} tokens) on {result['device']}",
             "", f"`{command}` — torch {result['torch']}. Every rank shares the same cores, so seconds show "
             "overhead, not speed-up; the point is memory per rank.", "",
             f"Finite-difference product against the exact one (one process): relative error "
             f"{single['fd_error_vs_exact']:.2e} (the operator's own estimate: {single['fd_error_estimate']:.2e}, "
             f"step {single['fd_step']:.3g}).", "",
             "| run | stage | value | ± | products | seconds (max over ranks) | longest vector per rank | "
             "peak memory per rank (GiB) |",
             "|---|---|---|---|---|---|---|---|"]
    runs = [("1 process, exact products", [single["exact"]], [single["parameters"]])]
    runs += [(f"{w} ranks, FSDP, finite differences", ranks, [r["largest_vector_allocated"] for r in ranks])
             for w, ranks in result["sharded"].items()]
    for label, ranks, lengths in runs:
        for stage in ("lambda_max", "trace", "density"):
            rows = [r[stage] for r in ranks]
            first = rows[0]
            if stage == "density":
                value, err = f"{first['top_node']:.6g}", "—"
            else:
                value, err = f"{first['value']:.6g}", f"{first.get('stderr', first.get('residual')):.2g}"
            peaks = ", ".join(f"{r['peak_rss_gib']:.2f}" for r in rows)
            lines.append(f"| {label} | {stage} | {value} | {err} | {first['hvps']} | "
                         f"{max(r['seconds'] for r in rows):.1f} | {max(lengths):,} | {peaks} |")
    lines += ["", "λ_max's ± is its relative Ritz residual, the trace's its standard error; the density's value is "
              "its largest node (the top of the spectrum it sees). The exact and sharded runs draw different "
              "random vectors (the sharded draws are the same for any number of ranks), so traces agree within "
              "their standard errors, not to rounding. The longest vector per rank is the longest the sharded "
              "operator created (its local slice); the one-process run holds full vectors. Peak memory is the "
              "resident set on a CPU, which includes each process's Python, torch and transformers (about "
              "0.4 GiB), and the peak allocation on a GPU."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[2, 4])
    model_arguments(parser)
    parser.add_argument("--trace-matvecs", type=int, default=16)
    parser.add_argument("--density-steps", type=int, default=30)
    parser.add_argument("--density-runs", type=int, default=2)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.device == "cuda" and torch.cuda.device_count() < max(args.ranks):
        parser.error(f"--device cuda --ranks {max(args.ranks)} needs {max(args.ranks)} GPUs; "
                     f"{torch.cuda.device_count()} visible")
    device = (f"{torch.cuda.get_device_name(0)} (nccl)" if args.device == "cuda" else "cpu (gloo)")
    result: dict[str, Any] = {"torch": torch.__version__, "device": device, "one_process": one_process(args),
                              "sharded": {}}
    with tempfile.TemporaryDirectory() as folder:
        for world in args.ranks:
            mp.start_processes(rank_entry, args=(world, folder, args), nprocs=world, join=True, start_method="spawn")
            result["sharded"][str(world)] = [json.loads((Path(folder) / f"w{world}-rank{r}.json").read_text())
                                             for r in range(world)]
    command = "python benchmarks/bench_sharded.py " + " ".join(sys.argv[1:])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({**result, "command": command}, indent=1))
    args.out.with_suffix(".md").write_text(markdown(result, command))
    print(markdown(result, command))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
