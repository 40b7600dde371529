"""Curvature of a large language model on one device: GPT-2 small (124 M parameters) built from its
config by ``transformers`` (randomly initialised; nothing is downloaded), on a token stream made
locally (bytes of a standard-library source file as token ids, ``--seqs`` windows of ``--seq-len``).

Stages, each with seconds, products, the peak resident memory of the process during the stage
(sampled every 0.1 s from ``/proc/self/status``) and the memory record of the result:

1. one gradient (the unit of cost) and one product in each exact mode, or by finite differences for
   bf16 weights (product/gradient ratio);
2. λ_max to tol 1e-3 by Lanczos at the library's defaults (memory budget: half the free memory);
3. a Hutchinson trace with ``--trace-matvecs`` probes, ± its standard error;
4. a ``--density-steps``-step SLQ density (``--density-runs`` runs);
5. PyHessian's power iteration (its defaults: ``maxIter=100, tol=1e-3``) on the same objective, where
   it runs (``--skip pyhessian`` leaves it out); curvlinops is left out when it is not installed;
6. the cost of a Lanczos step with the Krylov basis beside the model (``basis="device"``) and in
   pinned host memory (``basis="host"``): ``--basis-steps`` steps of each (no early stop), seconds per
   step and their ratio (on the CPU both are the same memory: the ratio checks the path, not a cost);
7. ``lanczos(op, k=1)`` on a diagonal operator of GPT-2 small's dimension at the defaults, the case
   that a worst-case-sized basis used to refuse.

    python benchmarks/bench_large.py --out benchmarks/results/large_cpu

``--config`` picks the model (``gpt2`` small by default; ``gpt2-medium``, ``gpt2-large``, ``llama-1b``, a
1.1 B Llama-style model; ``tiny`` and ``llama-tiny`` for tests), ``--weights bf16`` bfloat16 weights
(products by finite differences whose error against a float32 copy is measured and recorded),
``--device cuda`` a GPU (``benchmarks/gpu.sh`` runs the large-model settings there). All numbers come from this
one process; on a shared machine ratios are the result, not absolute seconds.
"""

from __future__ import annotations

import argparse
import json
import platform
import textwrap
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sharpscope import ConvergenceWarning, HessianOperator, LambdaOperator, Objective, hutchinson, lanczos, slq_density
from sharpscope.data.text import byte_tokens
from sharpscope.errors import SharpscopeError
from sharpscope.losses import token_cross_entropy


def rss_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


@contextmanager
def peak_rss(record: dict[str, Any]) -> Iterator[None]:
    """Sample the resident set every 0.1 s while the block runs; store its peak in ``record``."""
    peak = [rss_bytes()]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.1):
            peak[0] = max(peak[0], rss_bytes())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    start = time.perf_counter()
    try:
        yield
    finally:
        done.set()
        thread.join()
        record["seconds"] = round(time.perf_counter() - start, 2)
        record["peak_rss_gib"] = round(max(peak[0], rss_bytes()) / 2**30, 2)


class _Stages(dict):  # type: ignore[type-arg]
    """The stages' rows; the whole result is saved each time a stage is recorded (a killed run keeps
    the stages it finished)."""

    def __init__(self, out: dict[str, Any], save: Callable[[dict[str, Any]], None]) -> None:
        super().__init__()
        self.out, self.save = out, save
        out["stages"] = self

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        self.save(self.out)


class Logits(nn.Module):
    """A causal LM whose output is its logits tensor (PyHessian calls ``criterion(model(x), y)``)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: Tensor) -> Tensor:
        return self.model(input_ids=ids).logits


def language_model(config_name: str, seed: int) -> nn.Module:
    """A causal LM built from its config (randomly initialised from ``seed``; nothing downloaded)."""
    import transformers

    configs: dict[str, Callable[[], Any]] = {
        "tiny": lambda: transformers.GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=512, n_positions=256),
        "gpt2": transformers.GPT2Config,  # the defaults are GPT-2 small: 12 layers, width 768, 50,257 tokens
        "gpt2-medium": lambda: transformers.GPT2Config(n_layer=24, n_embd=1024, n_head=16),
        "gpt2-large": lambda: transformers.GPT2Config(n_layer=36, n_embd=1280, n_head=20),
        # a 1.1 B Llama-style model (TinyLlama's shape) and its tiny twin for tests
        "llama-1b": lambda: transformers.LlamaConfig(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                                                     num_attention_heads=32, num_key_value_heads=4, vocab_size=32000),
        "llama-tiny": lambda: transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                                       num_attention_heads=4, num_key_value_heads=2, vocab_size=512),
    }
    torch.manual_seed(seed)
    config = configs[config_name]()
    model = transformers.AutoModelForCausalLM.from_config(config)  # default attention: products use the math kernel
    return Logits(model).eval()


def seconds_of(fn: Callable[[], object], repeats: int = 2) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def run(args: argparse.Namespace, save: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    device = torch.device(args.device)
    model = language_model(args.config, args.seed).to(device)
    if args.weights == "bf16":
        model = model.to(torch.bfloat16)
    text = Path(textwrap.__file__).read_bytes() * 4
    x, y = byte_tokens(text, seq_len=args.seq_len)
    x, y = x[: args.seqs].to(device), y[: args.seqs].to(device)
    objective = Objective(model, token_cross_entropy, (x, y), weight_precision="native" if args.weights == "bf16" else "upcast")
    dim = objective.dim
    names = {"tiny": "GPT-2 (tiny)", "gpt2": "GPT-2 small", "gpt2-medium": "GPT-2 medium", "gpt2-large": "GPT-2 large",
             "llama-1b": "Llama-style 1.1 B", "llama-tiny": "Llama-style (tiny)"}
    out: dict[str, Any] = {"model": names[args.config] + (" (bf16 weights)" if args.weights == "bf16" else ""),
                           "parameters": dim, "tokens": int(x.numel()), "shape": list(x.shape),
                           "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
                           "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                           "stages": {}}
    stages = _Stages(out, save)

    leaves = {n: p.detach().requires_grad_(True) for n, p in objective.param_values().items()}

    def gradient() -> None:
        loss = objective.batch_loss(leaves, objective.batches[0])
        torch.autograd.grad(loss, list(leaves.values()))

    with torch.enable_grad():
        row = {}
        with peak_rss(row):
            g = seconds_of(gradient)
        row["gradient_seconds"] = round(g, 3)
        stages["gradient"] = row
    v = torch.randn(dim, generator=torch.Generator().manual_seed(0)).to(device)
    for mode in (("fd",) if args.weights == "bf16" else ("rev-rev", "fwd-rev")):
        row: dict[str, Any] = {}
        with peak_rss(row):
            try:
                op = HessianOperator(objective, mode=mode, cache_graphs=False)
                p = seconds_of(lambda op=op: op.matvec(v))
                row.update(product_seconds=round(p, 3), product_over_gradient=round(p / g, 2))
            except Exception as err:  # a mode that cannot run is reported, not fatal
                row["failed"] = f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
        stages[f"product {mode}"] = row

    H = HessianOperator(objective)
    top = None

    def top_eigenvalue() -> dict[str, Any]:
        nonlocal top
        top = lanczos(H, k=1, tol=1e-3, seed=args.seed)
        return dict(value=float(top.eigenvalues[0]), residual=float(top.residuals[0]),
                    error_bound=float(top.error_bounds[0]) if top.error_bounds is not None else None,
                    converged=top.converged, hvps=top.hvps, steps=top.settings["steps"],
                    memory=top.settings["memory"], hvp_mode=H.mode, symmetry_gap=top.settings["symmetry_gap"])

    def trace() -> dict[str, Any]:
        tr = hutchinson(H, args.trace_matvecs, seed=args.seed)
        return dict(estimate=tr.estimate, stderr=tr.stderr, hvps=tr.hvps, memory=tr.settings["memory"])

    def density() -> dict[str, Any]:
        esd = slq_density(H, num_steps=args.density_steps, num_runs=args.density_runs, seed=args.seed)
        used = esd.nodes[esd.weights > 0]
        return dict(trace=esd.trace, extreme_nodes=[float(used.min()), float(used.max())], hvps=esd.hvps,
                    memory=esd.settings["memory"], reorthogonalize=esd.settings["reorthogonalize"])

    def basis_cost() -> dict[str, Any]:
        per_step, hvps = {}, 0
        for where in ("device", "host"):
            start = time.perf_counter()
            r = lanczos(H, k=1, tol=1e-14, max_iter=args.basis_steps, seed=args.seed, basis=where)
            per_step[where] = (time.perf_counter() - start) / r.settings["steps"]
            hvps += r.hvps
        return dict(device_step_seconds=round(per_step["device"], 4), host_step_seconds=round(per_step["host"], 4),
                    host_over_device=round(per_step["host"] / per_step["device"], 3), hvps=hvps)

    for name, stage in (("lambda_max (lanczos, defaults)", top_eigenvalue),
                        (f"trace (hutchinson, {args.trace_matvecs} probes)", trace),
                        (f"density (slq, {args.density_runs} x {args.density_steps})", density),
                        (f"lanczos step, basis on device vs host ({args.basis_steps} steps each)", basis_cost)):
        row = {}
        with warnings.catch_warnings(), peak_rss(row):
            warnings.simplefilter("ignore", ConvergenceWarning)
            try:
                row.update(stage())
            except SharpscopeError as err:  # a refusal (say, products too asymmetric) is a result
                row["failed"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
        stages[name] = row

    if "pyhessian" not in args.skip and args.weights == "fp32" and top is not None:
        row = {}
        with peak_rss(row):
            try:
                import pyhessian

                h = pyhessian.hessian(model, lambda out, t: token_cross_entropy(out, t), data=(x, y),
                                      cuda=device.type == "cuda")
                torch.manual_seed(args.seed)  # PyHessian draws its start vector from the global generator
                values, _ = h.eigenvalues(top_n=1)
                row.update(value=float(values[0]), relative_difference=abs(float(values[0]) - float(top.eigenvalues[0]))
                           / abs(float(top.eigenvalues[0])), note="power iteration, maxIter=100, tol=1e-3")
            except Exception as err:
                row["failed"] = f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
        stages["pyhessian eigenvalues (defaults)"] = row
    try:
        import curvlinops  # noqa: F401

        stages["curvlinops"] = {"note": "installed but not run by this benchmark"}
    except ImportError:
        stages["curvlinops"] = {"note": "not installed (extra bench): skipped"}

    d = torch.linspace(0.0, 1.0, dim, device=device)
    d[-1] = 2.0
    row = {}
    with peak_rss(row):
        diag = lanczos(LambdaOperator(lambda V: d[:, None] * V, dim, dtype=torch.float32, device=device), k=1, seed=0)
    row.update(value=float(diag.eigenvalues[0]), converged=diag.converged, hvps=diag.hvps,
               memory=diag.settings["memory"])
    stages[f"lanczos(k=1) on a diagonal operator of dimension {dim:,}"] = row
    return out


def markdown(result: dict[str, Any], command: str) -> str:
    lines = [f"# {result['model']}: curvature on one CPU device", "", f"`{command}`", "",
             f"{result['parameters']:,} parameters, {result['tokens']} tokens ({result['shape'][0]} × "
             f"{result['shape'][1]}), torch {result['torch']}, {result['threads']} threads.", "",
             "| stage | seconds | peak RSS (GiB) | products | result | strategy, peak vector memory |",
             "|---|---|---|---|---|---|"]
    for name, row in result["stages"].items():
        memory = row.get("memory") or {}
        budget = memory.get("budget_bytes")
        limit = f"of {budget / 2**30:.2f}" if budget else "(budget not limiting)"
        strategy = f"{memory.get('strategy')}, {memory.get('peak_vector_bytes', 0) / 2**30:.2f} GiB {limit}" if memory else ""
        if "failed" in row:
            value = row["failed"]
        elif "product_over_gradient" in row:
            value = f"{row['product_seconds']} s = {row['product_over_gradient']}× a gradient"
        elif "gradient_seconds" in row:
            value = f"{row['gradient_seconds']} s per gradient"
        elif "host_over_device" in row:
            value = (f"{row['device_step_seconds']} s per step on the device, {row['host_step_seconds']} s in host"
                     f" memory: {row['host_over_device']}×")
        elif "estimate" in row:
            value = f"{row['estimate']:.4g} ± {row['stderr']:.2g}"
        elif "value" in row:
            value = f"{row['value']:.6g}" + (f" (residual {row['residual']:.1e})" if "residual" in row else "")
            value += f" ({row['relative_difference']:.1e} from Lanczos)" if "relative_difference" in row else ""
        elif "trace" in row:
            value = f"trace {row['trace']:.4g}, nodes {row['extreme_nodes'][0]:.3g} … {row['extreme_nodes'][1]:.3g}"
        else:
            value = row.get("note", "")
        lines.append(f"| {name} | {row.get('seconds', '')} | {row.get('peak_rss_gib', '')} | {row.get('hvps', '')} "
                     f"| {value} | {strategy} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seqs", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--trace-matvecs", type=int, default=10)
    parser.add_argument("--density-steps", type=int, default=30)
    parser.add_argument("--density-runs", type=int, default=1)
    parser.add_argument("--basis-steps", type=int, default=20, help="Lanczos steps per basis location")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip", default="", help="comma-separated: pyhessian")
    parser.add_argument("--config", default="gpt2",
                        choices=["tiny", "gpt2", "gpt2-medium", "gpt2-large", "llama-1b", "llama-tiny"])
    parser.add_argument("--tiny", action="store_true", help="the same as --config tiny")
    parser.add_argument("--weights", default="fp32", choices=["fp32", "bf16"],
                        help="bf16: bfloat16 weights, products by measured finite differences")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None, help="write OUT.json and OUT.md")
    args = parser.parse_args()
    args.skip = set(filter(None, args.skip.split(",")))
    if args.tiny:
        args.config = "tiny"
    import sys

    command = "python " + " ".join(sys.argv)

    def save(result: dict[str, Any]) -> None:
        text = json.dumps(result, indent=1)
        print(f"stage done: {list(result['stages'])[-1]}", file=sys.stderr, flush=True)
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.with_suffix(".json").write_text(text + "\n")
            args.out.with_suffix(".md").write_text(markdown(result, command))

    run(args, save)

if __name__ == "__main__":
    main()
