"""Benchmark of loss-landscape slices: a 2-D slice of a CIFAR ResNet-18 along filter-normalised random
directions, with the vmapped grid evaluation against the point-by-point loop.

Settings:
  gpu  CIFAR ResNet-18 (BatchNorm, eval mode, 11.2 M parameters), first 5,000 CIFAR-10 images in
       batches of 500, 41 × 41 grid, CUDA, strict fp32 unless --precision tf32 (target: under 2 minutes)
  cpu  the same network at width 8 (0.18 M parameters), first 500 images in batches of 250, 11 × 11 grid

Measures: one plain forward pass over the probe set (the floor for one grid point); seconds per
point of a 1-D slice evaluated point by point (``method="loop"``) and vmapped over chunks
(``"vmap"``), each after a one-point warm-up; the whole 2-D slice (``"auto"``) with its points per
second, and the center loss against ``Objective.loss()``. The network gets a few SGD steps first so
its BatchNorm running statistics fit the data (the cost of a slice does not depend on the weights).
Writes ``landscape_<setting>.json`` and ``.md``.

    python benchmarks/bench_landscape.py --setting cpu --threads 1
    python benchmarks/bench_landscape.py --setting gpu --data ../shared/data/cifar10_train16k.npz
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from sharpscope import Objective
from sharpscope.curvature.operators.precision import PRECISIONS, ProductPrecision, product_precision
from sharpscope.data import cifar10
from sharpscope.landscape import random_directions, slice_1d, slice_2d
from sharpscope.losses import cross_entropy
from sharpscope.models import build_model

SETTINGS = {
    "gpu": dict(device="cuda", n=5000, batch=500, width=64, grid=41, line=41, chunk=16, train_steps=100),
    "cpu": dict(device="cpu", n=500, batch=250, width=8, grid=11, line=11, chunk=16, train_steps=20),
}
SMOKE = dict(device="cpu", n=32, batch=16, width=4, grid=3, line=3, chunk=4, train_steps=2)
DEFAULT_DATA = (".devdata/cifar5k.npz", "../shared/data/cifar10_train16k.npz")


def load_images(path: str | None, n: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The first ``n`` CIFAR-10 training images (channel-standardised), or seeded noise without a file."""
    found = path or next((p for p in DEFAULT_DATA if Path(p).is_file()), None)
    if found is None:
        gen = torch.Generator().manual_seed(0)
        return torch.randn(n, 3, 32, 32, generator=gen), torch.randint(0, 10, (n,), generator=gen), "synthetic"
    data = cifar10(found, n=n)
    return data.x, data.y, f"{Path(found).name}: {data.name}"


def train_briefly(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, batch: int) -> None:
    """A few SGD steps in train mode, so the BatchNorm running statistics (used in eval mode) fit the data."""
    gen = torch.Generator().manual_seed(1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (batch,), generator=gen).to(x.device)
        opt.zero_grad()
        cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    model.eval()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forward_seconds(objective: Objective, device: torch.device, precision: ProductPrecision,
                    repeats: int = 3) -> float:
    """Median seconds of one plain forward pass over every batch (after a warm-up)."""
    times = []
    with torch.no_grad(), objective.mode(), product_precision(precision, device):
        for i in range(repeats + 1):
            sync(device)
            start = time.perf_counter()
            for batch in objective.batches:
                objective.model(batch.x)
            sync(device)
            if i:
                times.append(time.perf_counter() - start)
    return float(np.median(times))


def markdown(result: dict) -> str:
    s = result["slice_2d"]
    lines = [f"# Loss-landscape benchmark: {result['setting']}", "", result["environment"], "",
             f"{result['model']}, {result['parameters']:,} parameters; {result['data']}, {result['probe_examples']} "
             f"examples in batches of {result['batch_size']}; {result['train_steps']} SGD steps from the seeded "
             f"init; BN eval, {result['precision']}; filter-normalised random directions.", "",
             "| measurement | seconds | seconds per point | points | method |", "|---|---|---|---|---|",
             f"| one forward pass over the probe set | {result['forward_seconds']:.3g} | "
             f"{result['forward_seconds']:.3g} | 1 | plain `model(x)` |"]
    for name, row in result["slice_1d"].items():
        lines.append(f"| 1-D slice, {name} | {row['seconds']:.3g} | {row['seconds_per_point']:.3g} | {row['points']} "
                     f"| {row['method']} (chunk {row['chunk_size']}) |")
    lines.append(f"| **{s['grid']} 2-D slice** | **{s['seconds']:.3g}** | {s['seconds_per_point']:.3g} | {s['points']} "
                 f"| {s['method']} (chunk {s['chunk_size']}) |")
    lines += ["", f"Center loss {s['center_loss']:.6g} (Objective.loss() {s['objective_loss']:.6g}); loss on the grid "
              f"{s['loss_min']:.4g} to {s['loss_max']:.4g}. Load average before/after: {result['load_before']} / "
              f"{result['load_after']}.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setting", choices=sorted(SETTINGS), required=True)
    parser.add_argument("--data", help="CIFAR-10 .npz or python-batch folder (default: .devdata/cifar5k.npz, "
                                       "then ../shared/data/cifar10_train16k.npz, else synthetic images)")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU, to check the script runs")
    parser.add_argument("--precision", choices=PRECISIONS, default="strict", help="the slices' arithmetic (recorded)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = dict(SMOKE if args.smoke else SETTINGS[args.setting])
    device = torch.device(cfg["device"])
    load_before = [round(x, 2) for x in os.getloadavg()]

    x, y, data_name = load_images(args.data, cfg["n"])
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=10, norm="bn", width=cfg["width"]).to(device)
    train_briefly(model, x.to(device), y.to(device), cfg["train_steps"], cfg["batch"])
    objective = Objective(model, cross_entropy, (x.to(device), y.to(device)), bn="eval", batch_size=cfg["batch"])
    directions = random_directions(objective, 2, seed=0)

    line = np.linspace(-1, 1, cfg["line"])
    rows = {}
    for method in ("loop", "vmap"):
        slice_1d(objective, directions.vectors[:1], [0.5], method=method, chunk_size=cfg["chunk"],
                 precision=args.precision)  # warm-up
        r = slice_1d(objective, directions.vectors[:1], line, method=method, chunk_size=cfg["chunk"],
                     precision=args.precision)
        rows[method] = {"seconds": r.seconds, "seconds_per_point": r.seconds / r.evaluations, "points": r.evaluations,
                        "method": r.settings["method"], "chunk_size": r.settings["chunk_size"]}
        print(json.dumps({f"slice_1d {method}": rows[method]}), flush=True)

    grid = np.linspace(-1, 1, cfg["grid"])
    r = slice_2d(objective, directions, grid, grid, chunk_size=cfg["chunk"], precision=args.precision)
    finite = r.loss[np.isfinite(r.loss)]
    two_d = {"grid": f"{cfg['grid']}×{cfg['grid']}", "seconds": r.seconds, "points": r.evaluations,
             "seconds_per_point": r.seconds / r.evaluations, "points_per_second": r.evaluations / r.seconds,
             "method": r.settings["method"], "method_selection": r.settings["method_selection"],
             "chunk_size": r.settings["chunk_size"], "center_loss": r.center_loss,
             "objective_loss": objective.loss(), "loss_min": float(finite.min()), "loss_max": float(finite.max())}
    print(json.dumps({"slice_2d": two_d}), flush=True)

    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")
    result = {"setting": "smoke" if args.smoke else args.setting, "data": data_name,
              "model": f"resnet18(width={cfg['width']}, norm='bn')", "parameters": objective.dim,
              "probe_examples": objective.num_examples, "batch_size": cfg["batch"], "train_steps": cfg["train_steps"],
              "environment": f"torch {torch.__version__}, {hardware} ({platform.machine()}, {os.cpu_count()} cores "
                             f"shared with other jobs), {torch.get_num_threads()} CPU threads, "
                             f"{time.strftime('%Y-%m-%d')}",
              "forward_seconds": forward_seconds(objective, device, args.precision),
              "precision": args.precision, "slice_1d": rows, "slice_2d": two_d,
              "load_before": load_before, "load_after": [round(x, 2) for x in os.getloadavg()]}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"landscape_{result['setting']}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
