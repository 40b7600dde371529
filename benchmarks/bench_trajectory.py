"""The real workload: λ_max along one training run, measured at every checkpoint three ways, side by side.

One edge-of-stability run (a tanh MLP, full-batch gradient descent on the first N CIFAR-10 images,
cross-entropy) is trained once. During training, :class:`~sharpscope.track.SharpnessTracker`
measures λ_max every ``--every`` steps, warm-started from its previous eigenvector (two trackers:
the eigenvalue rule and the residual rule, both at tol 1e-3 with the graph cache). The parameters at
each checkpoint are kept, and afterwards, at every checkpoint, λ_max is measured from scratch by
PyHessian (``eigenvalues(top_n=1)`` at its default tol 1e-3 and at 1e-4), by hessian-eigenthings
(``lanczos(k=1)``, a fixed number of steps) and by sharpscope's defaults, against a tight reference
(Lanczos, relative residual 1e-6). Reported: total curvature seconds and HVPs per method, relative
errors, the tracker's cost as a fraction of the training time, and a cold table at the last (edge of
stability) checkpoint with each method's defaults and at equal accuracy (median of ``--repeats``).

    python benchmarks/bench_trajectory.py --data ../shared/data/cifar10_train16k.npz

All timings come from this one process on the same objective; ratios, not absolute seconds, are the
result. Without ``--data`` the images are synthetic (plumbing only).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engine import count_calls, load_images  # noqa: E402  (the sibling benchmark's helpers)

from sharpscope import HessianOperator, Objective, lanczos  # noqa: E402
from sharpscope.curvature import CurvatureSettings  # noqa: E402
from sharpscope.models import build_model  # noqa: E402
from sharpscope.track import SharpnessTracker  # noqa: E402

TARGET = 1e-3  # relative accuracy asked of λ_max at every checkpoint


def timed(fn: Callable[[], tuple[float, int]]) -> dict[str, float]:
    start = time.perf_counter()
    value, hvps = fn()
    return {"value": float(value), "hvps": int(hvps), "seconds": time.perf_counter() - start}


def pyhessian_top(model: nn.Module, batches: list, tol: float) -> tuple[float, int]:
    import pyhessian

    torch.manual_seed(0)
    h = pyhessian.hessian(model, nn.CrossEntropyLoss(), dataloader=batches, cuda=False)
    calls = count_calls(h, "dataloader_hv_product")
    values, _ = h.eigenvalues(maxIter=100, tol=tol, top_n=1)
    return float(values[0]), calls[0]


def eigenthings_top(model: nn.Module, batches: list, max_iter: int | None) -> tuple[float, int]:
    import hessian_eigenthings as he

    H = he.HessianOperator(model, batches, he.supervised_loss(nn.functional.cross_entropy))
    calls = count_calls(H, "matvec")
    res = he.lanczos(H, k=1, which="LA", seed=0, **({} if max_iter is None else {"max_iter": max_iter}))
    return float(res.eigenvalues[0]), calls[0]


BOUNDS: list[float] = []  # the error bound of the last sharpscope call, for the record


def sharpscope_top(objective: Objective, **kwargs: object) -> tuple[float, int]:
    op_kwargs = {k: kwargs.pop(k) for k in ("cache_graphs", "mode") if k in kwargs}
    res = lanczos(HessianOperator(objective, **op_kwargs), k=1, seed=0, **kwargs)
    BOUNDS[:] = [float(res.error_bounds[0])]
    return float(res.eigenvalues[0]), res.hvps


def reference(objective: Objective) -> float:
    op = HessianOperator(objective, mode="rev-rev", cache_graphs=True)
    return float(lanczos(op, k=1, tol=1e-6, stop="residual", max_iter=200, seed=123).eigenvalues[0])


def train_and_track(args: argparse.Namespace, x: torch.Tensor, y: torch.Tensor) -> dict:
    torch.manual_seed(0)
    model = build_model("mlp", in_features=x.shape[1], num_classes=10, widths=[200, 200], activation="tanh")
    loss_fn = nn.CrossEntropyLoss()
    trackers = {rule: SharpnessTracker((x, y), loss_fn, every=args.every, batch_size=args.batch, grad_norm=False,
                                       curvature=CurvatureSettings(tol=TARGET, stop=rule, cache_graphs=True),
                                       threshold=None)
                for rule in ("eigenvalue", "residual")}
    sharpscope_top(Objective(model, loss_fn, (x, y), batch_size=args.batch), tol=0.5)  # warm-up, not timed
    opt = torch.optim.SGD(model.parameters(), lr=args.lr)
    train_seconds, checkpoints = 0.0, []
    rows: dict[str, list[dict]] = {rule: [] for rule in trackers}
    for step in range(args.steps + 1):
        if step % args.every == 0:
            checkpoints.append((step, {k: v.detach().clone() for k, v in model.state_dict().items()}))
            for rule, tracker in trackers.items():
                rec = tracker.measure(step, model)
                rows[rule].append({"step": step, "value": rec["eigenvalues"][0], "hvps": rec["hvps"],
                                   "residual": rec["residuals"][0],
                                   "seconds": rec["seconds"], "measure_seconds": rec["cost"]["seconds"],
                                   "train_loss": rec["train_loss"], "train_acc": rec["train_acc"]})
        if step == args.steps:
            break
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
        train_seconds += time.perf_counter() - start
    return {"model": model, "checkpoints": checkpoints, "tracker_rows": rows, "train_seconds": train_seconds}


def methods(args: argparse.Namespace) -> dict[str, Callable[[nn.Module, Objective, list], tuple[float, int]]]:
    out: dict[str, Callable[[nn.Module, Objective, list], tuple[float, int]]] = {
        "sharpscope defaults (cold: residual rule tol 1e-3, graph cache auto)": lambda m, o, b: sharpscope_top(o),
        "sharpscope eigenvalue rule tol 1e-3 (cold, graph cache auto)":
            lambda m, o, b: sharpscope_top(o, stop="eigenvalue"),
        "pyhessian tol=1e-3 (default)": lambda m, o, b: pyhessian_top(m, b, 1e-3),
        "pyhessian tol=1e-4": lambda m, o, b: pyhessian_top(m, b, 1e-4),
        f"hessian-eigenthings lanczos max_iter={args.eigenthings_steps}":
            lambda m, o, b: eigenthings_top(m, b, args.eigenthings_steps),
    }
    return {k: v for k, v in out.items() if not any(s in k for s in args.skip)}


def cold_methods(args: argparse.Namespace) -> dict[str, Callable[[nn.Module, Objective, list], tuple[float, int]]]:
    out: dict[str, Callable[[nn.Module, Objective, list], tuple[float, int]]] = {
        "sharpscope defaults (residual rule tol 1e-3, graph cache auto)": lambda m, o, b: sharpscope_top(o),
        "sharpscope previous defaults (residual rule tol 1e-3, no cache)":
            lambda m, o, b: sharpscope_top(o, cache_graphs=False),
        "sharpscope eigenvalue rule tol 1e-3, graph cache auto": lambda m, o, b: sharpscope_top(o, stop="eigenvalue"),
        "sharpscope residual rule tol 1e-2, graph cache auto": lambda m, o, b: sharpscope_top(o, tol=1e-2),
        "pyhessian defaults (tol 1e-3)": lambda m, o, b: pyhessian_top(m, b, 1e-3),
        "pyhessian tol 1e-4": lambda m, o, b: pyhessian_top(m, b, 1e-4),
        "pyhessian tol 1e-6": lambda m, o, b: pyhessian_top(m, b, 1e-6),
        "hessian-eigenthings defaults (max_iter 2k=2)": lambda m, o, b: eigenthings_top(m, b, None),
        f"hessian-eigenthings max_iter={args.eigenthings_steps}":
            lambda m, o, b: eigenthings_top(m, b, args.eigenthings_steps),
    }
    return {k: v for k, v in out.items() if not any(s in k for s in args.skip)}


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    x, y, name = load_images(args.data, args.n)
    x = x.flatten(1)
    batches = [(x[i:i + args.batch], y[i:i + args.batch]) for i in range(0, len(x), args.batch)]
    trained = train_and_track(args, x, y)
    model = trained["model"]
    per_method: dict[str, list[dict]] = {k: [] for k in methods(args)}
    truths = []
    for step, state in trained["checkpoints"]:
        model.load_state_dict(state)
        objective = Objective(model, nn.CrossEntropyLoss(), batches)
        truth = reference(objective)
        truths.append({"step": step, "lambda_max": truth})
        for label, fn in methods(args).items():
            BOUNDS.clear()
            row = timed(lambda: fn(model, objective, batches))
            bound = {"error_bound": BOUNDS[0]} if BOUNDS else {}
            per_method[label].append({"step": step, **row, **bound,
                                      "relative_error": abs(row["value"] - truth) / truth})
        print(f"step {step}: λ_max {truth:.4f}", file=sys.stderr, flush=True)
    for rule, rows in trained["tracker_rows"].items():
        label = f"sharpscope tracker, warm start, {rule} rule tol 1e-3, graph cache"
        per_method[label] = [{**r, "relative_error": abs(r["value"] - t["lambda_max"]) / t["lambda_max"]}
                             for r, t in zip(rows, truths)]
    totals = {}
    for label, rows in per_method.items():
        errors = [r["relative_error"] for r in rows]
        totals[label] = {"seconds": sum(r["seconds"] for r in rows), "hvps": sum(r["hvps"] for r in rows),
                         "max_relative_error": max(errors), "median_relative_error": statistics.median(errors),
                         "checkpoints_within_target": sum(e <= TARGET for e in errors), "checkpoints": len(rows)}
        if all("error_bound" in r for r in rows):  # does the reported bound cover the true error?
            totals[label]["bound_covers_error"] = sum(
                r["error_bound"] >= abs(r["value"] - t["lambda_max"]) for r, t in zip(rows, truths))

    cold = {}
    step, state = trained["checkpoints"][-1]
    model.load_state_dict(state)
    objective = Objective(model, nn.CrossEntropyLoss(), batches)
    truth = truths[-1]["lambda_max"]
    for label, fn in cold_methods(args).items():
        runs = [timed(lambda: fn(model, objective, batches)) for _ in range(args.repeats)]
        row = {"value": runs[0]["value"], "hvps": runs[0]["hvps"],
               "seconds": statistics.median(r["seconds"] for r in runs), "seconds_all": [r["seconds"] for r in runs]}
        cold[label] = {**row, "relative_error": abs(row["value"] - truth) / truth}
    tracker_total = totals["sharpscope tracker, warm start, residual rule tol 1e-3, graph cache"]
    return {
        "setting": {"data": name, "n": args.n, "model": "mlp 3072-200-200-10 tanh", "loss": "cross entropy",
                    "optimizer": f"full-batch GD, lr {args.lr}", "steps": args.steps, "every": args.every,
                    "probe_batch": args.batch, "target_relative_accuracy": TARGET, "threads": args.threads,
                    "dim": objective.dim, "eos_threshold_2_over_lr": 2 / args.lr},
        "platform": {"python": platform.python_version(), "torch": torch.__version__, "cpu": platform.processor()
                     or platform.machine()},
        "train_seconds": trained["train_seconds"],
        "tracker_overhead_fraction": tracker_total["seconds"] / trained["train_seconds"],
        "reference": truths, "per_checkpoint": per_method, "totals": totals,
        "cold_at_last_checkpoint": {"step": step, "lambda_max": truth, "rows": cold},
        "command": " ".join(["python", *sys.argv]),
    }


def markdown(result: dict) -> str:
    s = result["setting"]
    lines = [f"# λ_max along a training run ({s['data']}, {s['model']}, {s['optimizer']}, {s['steps']} steps)", "",
             f"Command: `{result['command']}`  ", f"{s['dim']:,} parameters, probe set in batches of "
             f"{s['probe_batch']}, λ_max measured every {s['every']} steps to relative accuracy "
             f"{s['target_relative_accuracy']:g}; {s['threads']} thread(s); torch {result['platform']['torch']}.", "",
             f"Training: {result['train_seconds']:.1f} s. Final λ_max {result['reference'][-1]['lambda_max']:.3f} "
             f"(2/η = {s['eos_threshold_2_over_lr']:.1f}).", "",
             "## All checkpoints", "",
             "| method | seconds | HVPs | median rel. error | max rel. error | within 1e-3 |",
             "|---|---:|---:|---:|---:|---:|"]
    for label, t in sorted(result["totals"].items(), key=lambda kv: kv[1]["seconds"]):
        covered = f" (bound ≥ error at {t['bound_covers_error']}/{t['checkpoints']})" if "bound_covers_error" in t else ""
        lines.append(f"| {label} | {t['seconds']:.1f} | {t['hvps']} | {t['median_relative_error']:.1e} | "
                     f"{t['max_relative_error']:.1e} | {t['checkpoints_within_target']}/{t['checkpoints']}{covered} |")
    lines += ["", f"Tracker (warm start, residual rule, its default) curvature seconds / training seconds: "
              f"{result['tracker_overhead_fraction']:.2f}", "",
              f"## Cold λ_max at the last checkpoint (step {result['cold_at_last_checkpoint']['step']}, "
              f"λ_max {result['cold_at_last_checkpoint']['lambda_max']:.4f}; median seconds of the repeats)", "",
              "| method | seconds | HVPs | rel. error |", "|---|---:|---:|---:|"]
    for label, r in result["cold_at_last_checkpoint"]["rows"].items():
        lines.append(f"| {label} | {r['seconds']:.2f} | {r['hvps']} | {r['relative_error']:.1e} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="CIFAR-10 npz (x uint8 NHWC, y); synthetic images without it")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=30)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--batch", type=int, default=1000, help="probe batch size (memory only)")
    parser.add_argument("--eigenthings-steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--skip", default="", help="comma-separated labels to leave out: pyhessian, eigenthings")
    parser.add_argument("--out", default=None, help="write OUT.json and OUT.md")
    args = parser.parse_args()
    args.skip = [s for s in args.skip.split(",") if s]
    result = run(args)
    text = markdown(result)
    print(text)
    if args.out:
        Path(args.out).with_suffix(".json").write_text(json.dumps(result, indent=1))
        Path(args.out).with_suffix(".md").write_text(text)


if __name__ == "__main__":
    main()
