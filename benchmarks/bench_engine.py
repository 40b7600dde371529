"""Side-by-side benchmark of sharpscope's curvature engine against PyHessian and hessian-eigenthings,
in one process, on one objective.

Settings:
  cpu-cnn       small CNN, first 1,000 CIFAR-10 images (synthetic images if no file is given), CPU
  gpu-resnet18  CIFAR ResNet-18 (BatchNorm, eval mode), first 5,000 CIFAR-10 images, CUDA, strict fp32

Measures: cost of one product as a ratio to one gradient (and peak memory on CUDA); compiled and
bfloat16 products against strict eager ones (seconds, compile seconds, relative deviation); seconds and
HVPs to the top eigenvalue at tol 1e-3, with the relative error against a tight Lanczos reference;
the top 5 by single-vector and block Lanczos; seconds for a trace estimate and the standard error it
reached. Writes JSON and a markdown table.

    python benchmarks/bench_engine.py --setting cpu-cnn --data ../shared/data/cifar10_train16k.npz
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sharpscope import HessianOperator, Objective, hutchinson, hutchpp, lanczos
from sharpscope.curvature.operators.hvp import HVP_MODES, compiled_fwd_rev
from sharpscope.curvature.operators.precision import product_precision, relative_deviation, strict_fp32
from sharpscope.models import build_model

SETTINGS = {
    "cpu-cnn": dict(device="cpu", n=1000, batch=250, model=("cnn", dict(in_channels=3, num_classes=10,
                                                                        channels=(16, 32))), train_steps=100),
    "gpu-resnet18": dict(device="cuda", n=5000, batch=500, model=("resnet18", dict(num_classes=10, norm="bn")),
                         train_steps=200),
}
MEAN, STD = torch.tensor([0.4914, 0.4822, 0.4465]), torch.tensor([0.2470, 0.2435, 0.2616])


def load_images(path: str | None, n: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    if path is None:
        gen = torch.Generator().manual_seed(0)
        return torch.randn(n, 3, 32, 32, generator=gen), torch.randint(0, 10, (n,), generator=gen), "synthetic"
    arrays = np.load(path)
    x = torch.from_numpy(arrays["x"][:n]).permute(0, 3, 1, 2).float() / 255
    x = (x - MEAN[:, None, None]) / STD[:, None, None]
    return x, torch.from_numpy(arrays["y"][:n]).long(), f"{Path(path).name}[:{n}]"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int = 3) -> tuple[float, float]:
    """Median seconds over ``repeats`` runs after one warm-up, and peak extra CUDA memory (GiB)."""
    fn()
    sync(device)
    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    peak = (torch.cuda.max_memory_allocated(device) - base) / 2**30 if device.type == "cuda" else float("nan")
    return statistics.median(times), peak


def train_briefly(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> None:
    """A few SGD steps so the Hessian is measured away from initialisation."""
    gen = torch.Generator().manual_seed(1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (128,), generator=gen).to(x.device)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    model.eval()


def product_costs(objective: Objective, device: torch.device) -> dict[str, dict[str, float]]:
    """One product on one batch, per probe, as a ratio to one gradient of the same batch."""
    batch, params = objective.batches[0], {n: p.detach() for n, p in objective.params.items()}
    grad_fn = torch.func.grad(objective.batch_loss)
    gen = torch.Generator().manual_seed(0)
    rows = torch.randn(8, objective.dim, generator=gen).to(device)
    out: dict[str, dict[str, float]] = {}
    with strict_fp32(), objective.mode():
        g_time, g_mem = timed(lambda: grad_fn(params, batch), device)
        out["gradient"] = {"seconds": g_time, "ratio": 1.0, "peak_gib": g_mem}
        for label, mode, m in (("fwd-rev, 1 probe", "fwd-rev", 1), ("fwd-rev, vmapped block of 8 (per probe)",
                                                                    "fwd-rev", 8),
                               ("rev-rev (double backward), 1 probe", "rev-rev", 1)):
            t, mem = timed(lambda: HVP_MODES[mode](objective, params, batch, rows[:m]), device)
            out[label] = {"seconds": t / m, "ratio": t / m / g_time, "peak_gib": mem}
    return out


def fast_products(objective: Objective, device: torch.device, skip: set[str]) -> dict[str, dict[str, object]]:
    """Compiled and bfloat16 products on one batch against the strict eager product of the same mode:
    seconds per probe (after the warm-up call, which compiles), the warm-up's seconds, and the relative
    deviation ``‖Hv − Hv_strict‖ / ‖Hv_strict‖`` on the same vectors."""
    batch, params = objective.batches[0], {n: p.detach() for n, p in objective.params.items()}
    gen = torch.Generator().manual_seed(0)
    rows = torch.randn(8, objective.dim, generator=gen).to(device)
    variants = (("fwd-rev eager", "fwd-rev", False, "strict"), ("fwd-rev compiled", "fwd-rev", True, "strict"),
                ("fwd-rev bf16 autocast", "fwd-rev", False, "bf16"),
                ("rev-rev eager", "rev-rev", False, "strict"), ("rev-rev bf16 autocast", "rev-rev", False, "bf16"))
    out: dict[str, dict[str, object]] = {}
    reference: dict[tuple[str, int], torch.Tensor] = {}
    with objective.mode():
        for label, mode, compiled, precision in variants:
            if compiled and "compile" in skip:
                continue
            fn = compiled_fwd_rev() if compiled else HVP_MODES[mode]
            for m in (1, 8):
                with product_precision(precision, device):  # type: ignore[arg-type]
                    start = time.perf_counter()
                    value = fn(objective, params, batch, rows[:m])
                    sync(device)
                    first = time.perf_counter() - start
                    t, _ = timed(lambda: fn(objective, params, batch, rows[:m]), device)
                reference.setdefault((mode, m), value)
                out[f"{label}, {'1 probe' if m == 1 else 'vmapped block of 8' if mode == 'fwd-rev' else '8 probes, one graph'}"] = {
                    "seconds_per_probe": t / m, "first_call_seconds": first,
                    "deviation": relative_deviation(value, reference[(mode, m)])}
    return out


def top_k(objective: Objective, k: int = 5) -> dict[str, dict[str, object]]:
    """The top ``k`` by single-vector and block Lanczos (block ``k``) at tol 1e-3, with the graph cache
    (the default on this setting) and without it, against a tight single-vector reference."""
    rows: dict[str, dict[str, object]] = {}
    op = HessianOperator(objective)
    ref = lanczos(op, k=k, tol=1e-6, max_iter=200, seed=123)
    truth = ref.eigenvalues
    for cache in ("auto", False):
        op = HessianOperator(objective, cache_graphs=cache)
        for block in (None, k):
            res = lanczos(op, k=k, tol=1e-3, max_iter=200, seed=0, block=block)
            name = (f"{'block' if block else 'single-vector'} lanczos k={k}{f', block={block}' if block else ''}, "
                    f"tol=1e-3 ({op.mode}, cache_graphs={'auto: ' if cache == 'auto' else ''}"
                    f"{op.describe()['cache_graphs']})")
            rows[name] = {"values": res.eigenvalues.tolist(), "seconds": res.seconds, "hvps": res.hvps,
                          "steps": res.settings["steps"], "max_residual": float(res.residuals.max()),
                          "converged": res.converged,
                          "max_relative_error": float(((res.eigenvalues - truth).abs() / truth.abs()).max())}
    rows[f"reference: single-vector lanczos k={k}, tol=1e-6"] = {
        "values": truth.tolist(), "seconds": ref.seconds, "hvps": ref.hvps, "steps": ref.settings["steps"],
        "max_residual": float(ref.residuals.max()), "converged": ref.converged, "max_relative_error": 0.0}
    return rows


def count_calls(obj: object, name: str) -> list[int]:
    """Wrap ``obj.name`` to count its calls; returns a one-element counter."""
    counter, original = [0], getattr(obj, name)

    def wrapped(*args, **kwargs):  # type: ignore[no-untyped-def]
        counter[0] += 1
        return original(*args, **kwargs)

    setattr(obj, name, wrapped)
    return counter


def run_eigenthings(model: nn.Module, batches: list, device: torch.device,
                    call: Callable[[Any, Any], Any]) -> tuple[Any, float, int] | None:
    """``call(hessian_eigenthings, its HessianOperator)`` timed in strict fp32, with the products it
    took; None when hessian-eigenthings is not installed."""
    try:
        import hessian_eigenthings as he
    except ImportError:
        return None
    H = he.HessianOperator(model, batches, he.supervised_loss(nn.functional.cross_entropy))
    calls = count_calls(H, "matvec")
    sync(device)
    start = time.perf_counter()
    with strict_fp32():
        res = call(he, H)
    sync(device)
    return res, time.perf_counter() - start, calls[0]


def top_eigenvalue(objective: Objective, model: nn.Module, batches: list, device: torch.device,
                   skip: set[str]) -> dict[str, dict[str, object]]:
    rows: dict[str, dict[str, object]] = {}
    op = HessianOperator(objective)
    res = lanczos(op, k=1, tol=1e-3, seed=0)  # includes auto mode selection (timed trials on batch 0)
    rows[f"sharpscope lanczos tol=1e-3 (auto: {op.mode}; incl. mode selection)"] = {
        "value": float(res.eigenvalues[0]), "seconds": res.seconds, "hvps": res.hvps,
        "residual": float(res.residuals[0]), "converged": res.converged, "mode_selection": op.selection}
    ref = lanczos(op, k=1, tol=1e-6, max_iter=40, seed=123)
    truth = float(ref.eigenvalues[0])
    rows["reference: sharpscope lanczos tol=1e-6"] = {"value": truth, "seconds": ref.seconds, "hvps": ref.hvps,
                                                       "residual": float(ref.residuals[0])}
    if "cached" not in skip:  # same objective, double backward on graphs kept between products
        op3 = HessianOperator(objective, cache_graphs=True)
        res = lanczos(op3, k=1, tol=1e-3, seed=0)
        rows["sharpscope lanczos tol=1e-3 (rev-rev, cache_graphs)"] = {
            "value": float(res.eigenvalues[0]), "seconds": res.seconds, "hvps": res.hvps,
            "residual": float(res.residuals[0]), "converged": res.converged}
        del op3
    variants = [("bf16", dict(precision="bf16"))] + ([] if "compile" in skip else [("compiled", dict(compile=True))])
    for label, options in variants:  # fast arithmetic / compiled products; seconds include the check (and compiling)
        op4 = HessianOperator(objective, **options)  # type: ignore[arg-type]
        res = lanczos(op4, k=1, tol=1e-3, seed=0)
        check = op4.precision_record()
        rows[f"sharpscope lanczos tol=1e-3 ({label}: {op4.mode}; product deviation {check['deviation']:.1e})"] = {
            "value": float(res.eigenvalues[0]), "seconds": res.seconds, "hvps": res.hvps,
            "residual": float(res.residuals[0]), "converged": res.converged, "product_precision": check}
        del op4
    if device.type == "cuda" and "variant" not in skip:  # same objective, GPU-friendlier settings
        merged = Objective(model, nn.CrossEntropyLoss(), [(torch.cat([a for a, _ in batches[i:i + 2]]),
                                                           torch.cat([b for _, b in batches[i:i + 2]]))
                                                          for i in range(0, len(batches), 2)], bn="eval")
        saved, torch.backends.cudnn.benchmark = torch.backends.cudnn.benchmark, True
        op2 = HessianOperator(merged, mode=op.modes["single"])
        lanczos(op2, k=1, tol=1e-3, max_iter=2, seed=7)  # warm cudnn's algorithm search
        res = lanczos(op2, k=1, tol=1e-3, seed=0)
        torch.backends.cudnn.benchmark = saved
        rows[f"sharpscope lanczos tol=1e-3 ({op2.mode}, batches of {2 * len(batches[0][0])}, cudnn.benchmark)"] = {
            "value": float(res.eigenvalues[0]), "seconds": res.seconds, "hvps": res.hvps,
            "residual": float(res.residuals[0]), "converged": res.converged}
    if "pyhessian" not in skip:
        import pyhessian

        torch.manual_seed(0)
        h = pyhessian.hessian(model, nn.CrossEntropyLoss(), dataloader=batches, cuda=device.type == "cuda")
        calls = count_calls(h, "dataloader_hv_product")
        sync(device)
        start = time.perf_counter()
        with strict_fp32():
            values, _ = h.eigenvalues(maxIter=100, tol=1e-3, top_n=1)
        sync(device)
        rows["pyhessian eigenvalues(top_n=1, tol=1e-3)"] = {"value": float(values[0]),
                                                            "seconds": time.perf_counter() - start, "hvps": calls[0]}
    if "eigenthings" not in skip:
        timed = run_eigenthings(model, batches, device, lambda he, H: he.lanczos(H, k=1, which="LA", seed=0))
        if timed is not None:
            res, seconds, hvps = timed
            rows["hessian-eigenthings lanczos(k=1), defaults"] = {
                "value": float(res.eigenvalues[0]), "seconds": seconds, "hvps": hvps}
    for row in rows.values():
        row["relative_error"] = abs(float(row["value"]) - truth) / abs(truth)
    return rows


def trace_rows(objective: Objective, model: nn.Module, batches: list, device: torch.device, budget: int,
               skip: set[str]) -> dict[str, dict[str, object]]:
    op = HessianOperator(objective)
    rows: dict[str, dict[str, object]] = {}
    for name, fn in (("hutch++", hutchpp), ("hutchinson", hutchinson)):
        if name in skip:
            continue
        res = fn(op, budget, seed=0)
        rows[f"sharpscope {name}, {budget} matvecs ({op.mode}, blocks of {op.block_size})"] = {
            "estimate": res.estimate, "stderr": res.stderr, "seconds": res.seconds, "hvps": res.hvps}
    if "eigenthings" not in skip:
        timed = run_eigenthings(model, batches, device,
                                lambda he, H: he.trace(H, num_matvecs=budget, method="hutch++", seed=0))
        if timed is not None:
            res, seconds, hvps = timed
            rows[f"hessian-eigenthings hutch++, {budget} matvecs"] = {
                "estimate": float(res.estimate), "stderr": float(res.stderr), "seconds": seconds, "hvps": hvps}
    if "pyhessian-trace" not in skip and "pyhessian" not in skip:
        import pyhessian

        torch.manual_seed(0)
        h = pyhessian.hessian(model, nn.CrossEntropyLoss(), dataloader=batches, cuda=device.type == "cuda")
        calls = count_calls(h, "dataloader_hv_product")
        sync(device)
        start = time.perf_counter()
        with strict_fp32():
            samples = torch.tensor(h.trace(maxIter=100, tol=1e-3), dtype=torch.float64)
        sync(device)
        rows["pyhessian trace(maxIter=100, tol=1e-3)"] = {
            "estimate": float(samples.mean()), "stderr": float(samples.std() / len(samples) ** 0.5),
            "seconds": time.perf_counter() - start, "hvps": calls[0]}
    for row in rows.values():
        row["relative_stderr"] = row["stderr"] / abs(row["estimate"])
    return rows


def markdown(result: dict) -> str:
    lines = [f"# Curvature engine benchmark: {result['setting']}", "", f"{result['environment']}", ""]
    lines += ["## One product on one batch", "", "| operation | seconds | ratio to gradient | peak extra GiB |",
              "|---|---|---|---|"]
    lines += [f"| {k} | {v['seconds']:.4g} | {v['ratio']:.2f} | {v['peak_gib']:.2f} |" for k, v in result["costs"].items()]
    ours = next(v for k, v in result["top_eigenvalue"].items() if k.startswith("sharpscope lanczos tol=1e-3 (auto"))
    lines += ["", "## Top eigenvalue", "", "| method | value | seconds | HVPs | relative error | speed-up of sharpscope |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {k} | {v['value']:.6g} | {v['seconds']:.3g} | {v['hvps']} | {v['relative_error']:.1e} | "
              f"{v['seconds'] / ours['seconds']:.1f}x |" for k, v in result["top_eigenvalue"].items()]
    if "fast_products" in result:
        lines += ["", "## Compiled and bfloat16 products (one batch, against strict eager products of the same mode)", "",
                  "| product | seconds per probe | first call (compiles) | relative deviation |", "|---|---|---|---|"]
        lines += [f"| {k} | {v['seconds_per_probe']:.4g} | {v['first_call_seconds']:.3g} | {v['deviation']:.1e} |"
                  for k, v in result["fast_products"].items()]
    if "top_k" in result:
        lines += ["", "## Top 5 eigenvalues: single-vector and block Lanczos", "",
                  "| method | seconds | HVPs | steps | max residual | max relative error |", "|---|---|---|---|---|---|"]
        lines += [f"| {k} | {v['seconds']:.3g} | {v['hvps']} | {v['steps']} | {v['max_residual']:.1e} | "
                  f"{v['max_relative_error']:.1e} |" for k, v in result["top_k"].items()]
    ours = next(v for k, v in result["trace"].items() if k.startswith("sharpscope hutch++"))
    lines += ["", "## Trace", "", "| method | estimate ± stderr | relative stderr | seconds | HVPs | speed-up of sharpscope hutch++ |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {k} | {v['estimate']:.5g} ± {v['stderr']:.3g} | {v['relative_stderr']:.1%} | {v['seconds']:.3g} | "
              f"{v['hvps']} | {v['seconds'] / ours['seconds']:.1f}x |" for k, v in result["trace"].items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setting", choices=sorted(SETTINGS), required=True)
    parser.add_argument("--data", help=".npz with CIFAR-10 arrays x (N,32,32,3) uint8 and y")
    parser.add_argument("--trace-matvecs", type=int, default=24)
    parser.add_argument("--skip", default="",
                        help="comma-separated: pyhessian, pyhessian-trace, eigenthings, hutchinson, compile")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU, to check the script runs")
    args = parser.parse_args()
    cfg = dict(SETTINGS[args.setting])
    skip = {s for s in args.skip.split(",") if s}
    if args.smoke:  # compiling takes tens of seconds whatever the size: the smoke path leaves it out
        cfg.update(device="cpu", n=16, batch=8, train_steps=2)
        skip.add("compile")
    device = torch.device(cfg["device"])

    x, y, data_name = load_images(args.data, cfg["n"])
    x, y = x.to(device), y.to(device)
    name, kwargs = cfg["model"]
    torch.manual_seed(0)
    model = build_model(name, **kwargs).to(device)
    train_briefly(model, x, y, cfg["train_steps"])
    batches = [(x[i:i + cfg["batch"]], y[i:i + cfg["batch"]]) for i in range(0, x.shape[0], cfg["batch"])]
    objective = Objective(model, nn.CrossEntropyLoss(), batches, bn="eval")

    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    result = {
        "setting": args.setting, "data": data_name, "model": f"{name} {kwargs}", "parameters": objective.dim,
        "probe_examples": objective.num_examples, "batch_size": cfg["batch"], "bn": "eval", "precision": "fp32, TF32 off",
        "skipped": sorted(skip),
        "environment": f"torch {torch.__version__}, {gpu}, {torch.get_num_threads()} CPU threads, "
                       f"{time.strftime('%Y-%m-%d')}",
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sections = (("costs", lambda: product_costs(objective, device)),
                ("fast_products", lambda: fast_products(objective, device, skip)),
                ("top_eigenvalue", lambda: top_eigenvalue(objective, model, batches, device, skip)),
                ("top_k", lambda: top_k(objective)),
                ("trace", lambda: trace_rows(objective, model, batches, device, args.trace_matvecs, skip)))
    for key, run in sections:  # saved after each section, so a run cut short keeps what it measured
        result[key] = run()
        print(json.dumps({key: result[key]}, indent=1), flush=True)
        (out / f"engine_{args.setting}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"engine_{args.setting}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
