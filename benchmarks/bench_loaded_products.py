"""Hessian-vector products on a GPT-2 as users load it: attention kernel, checkpointing, bf16 weights.

A GPT-2 built from its config by ``transformers`` (``--layers``, ``--width``, 4 heads, vocabulary
256), a fixed token batch (``--rows`` × ``--seq`` ids, seed 0), the causal-LM head's own loss
(``Objective(model, None, batch)``). Each setting's operator multiplies one vector once (the first
product includes any mode choice and the one-time error check), then ``--repeats`` more times; the
table gives both, with the recorded deviation from exact float32 products where one is measured.
One process, one thread: compare rows, not absolute seconds, on a shared machine.

    OMP_NUM_THREADS=1 python benchmarks/bench_loaded_products.py --out benchmarks/results/loaded_products_cpu.md
"""

from __future__ import annotations

import argparse
import copy
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from sharpscope import HessianOperator, Objective
from sharpscope.io.atomic import atomic_write_bytes


def gpt2(layers: int, width: int, seq: int) -> nn.Module:
    import transformers

    config = transformers.GPT2Config(n_layer=layers, n_embd=width, n_head=4, vocab_size=256, n_positions=seq,
                                     bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config).eval()


def timed(model: nn.Module, batch: dict[str, torch.Tensor], mode: str, weights: str, repeats: int) -> list[str]:
    objective = Objective(model, None, batch, weight_precision=weights, validate=False)  # type: ignore[arg-type]
    op = HessianOperator(objective, mode=mode, cache_graphs=False)  # type: ignore[arg-type]
    v = torch.randn(op.dim, generator=torch.Generator().manual_seed(1))
    start = time.perf_counter()
    op.matvec(v)
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(repeats):
        op.matvec(v)
    deviation = op.precision_record().get("deviation")
    return [op.mode, f"{first:.2f}", f"{(time.perf_counter() - start) / repeats:.3f}",
            "—" if deviation is None else f"{deviation:.1e}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)  # gradient_checkpointing_enable's new name
    base = gpt2(args.layers, args.width, args.seq)
    batch = {"input_ids": torch.randint(0, 256, (args.rows, args.seq), generator=torch.Generator().manual_seed(0))}
    eager, sdpa = copy.deepcopy(base), copy.deepcopy(base)
    eager.config._attn_implementation, sdpa.config._attn_implementation = "eager", "sdpa"
    checkpointed = copy.deepcopy(sdpa)
    checkpointed.gradient_checkpointing_enable()
    bf16 = copy.deepcopy(sdpa).to(torch.bfloat16)
    settings = [("eager attention", eager, "rev-rev", "upcast"), ("sdpa (math backend)", sdpa, "rev-rev", "upcast"),
                ("sdpa (math backend)", sdpa, "fwd-rev", "upcast"), ("sdpa (math backend)", sdpa, "fd", "upcast"),
                ("sdpa, checkpointed", checkpointed, "auto", "upcast"), ("bf16 weights, upcast", bf16, "rev-rev", "upcast"),
                ("bf16 weights, native", bf16, "auto", "native"), ("bf16 weights, native", bf16, "rev-rev", "native")]
    objective = Objective(sdpa, None, batch, validate=False)
    start = time.perf_counter()
    for _ in range(args.repeats):
        objective.gradient()
    gradient = (time.perf_counter() - start) / args.repeats
    dim = sum(p.numel() for p in base.parameters())
    lines = [f"# Products on a loaded GPT-2 ({dim:,} parameters, {args.rows} × {args.seq} tokens, "
             f"{torch.get_num_threads()} thread(s))", "",
             "    OMP_NUM_THREADS=1 python benchmarks/bench_loaded_products.py --out "
             "benchmarks/results/loaded_products_cpu.md", "",
             f"A gradient of the same objective: {gradient:.3f} s.", "",
             "| setting | requested | mode | first product (s) | later products (s) | deviation |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, model, mode, weights in settings:
        row = [name, mode, *timed(model, batch, mode, weights, args.repeats)]
        lines.append("| " + " | ".join(row) + " |")
        print(lines[-1], flush=True)
    if args.out is not None:
        atomic_write_bytes(args.out, ("\n".join(lines) + "\n").encode())


if __name__ == "__main__":
    main()
