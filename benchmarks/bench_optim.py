"""Cost of one SAM step relative to one SGD step on the same batch (CPU by default).

Both steps include everything a training loop pays: zero_grad, forward, backward and the update
(SAM: two forward/backward passes, the ascent vector, the weight copy and restore, BatchNorm
handling). The two optimizers are timed interleaved on the same batch and model; the median over
repeats is reported. Target: SAM/SGD <= 2.2 (the two passes alone make it ~2).

    python benchmarks/bench_optim.py                       # small CNN, writes results/optim_cpu.json
    python benchmarks/bench_optim.py --model mlp --repeats 50
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from sharpscope.optim import SAM


def small_cnn(num_classes: int = 10) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(64, num_classes),
    )


def mlp(num_classes: int = 10) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                         nn.Linear(512, num_classes))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["cnn", "mlp"], default="cnn")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "optim_cpu.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, 32, 32, generator=gen).to(dev)
    y = torch.randint(0, 10, (args.batch,), generator=gen).to(dev)
    torch.manual_seed(0)
    build = small_cnn if args.model == "cnn" else mlp
    model_sgd, model_sam = build().to(dev), build().to(dev)
    model_sam.load_state_dict(model_sgd.state_dict())
    loss_fn = nn.CrossEntropyLoss()

    sgd = torch.optim.SGD(model_sgd.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    sam = SAM(model_sam.parameters(), torch.optim.SGD, rho=0.05, lr=0.01, momentum=0.9, weight_decay=5e-4,
              model=model_sam)

    def sgd_step() -> None:
        sgd.zero_grad()
        loss_fn(model_sgd(x), y).backward()
        sgd.step()

    def sam_closure() -> torch.Tensor:
        sam.zero_grad()
        loss = loss_fn(model_sam(x), y)
        loss.backward()
        return loss

    def sam_step() -> None:
        sam.step(sam_closure)

    def timed(fn) -> float:
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    for _ in range(args.warmup):
        sgd_step()
        sam_step()
    t_sgd, t_sam = [], []
    for _ in range(args.repeats):  # interleaved so that machine load affects both alike
        t_sgd.append(timed(sgd_step))
        t_sam.append(timed(sam_step))
    med_sgd, med_sam = statistics.median(t_sgd), statistics.median(t_sam)
    result = {
        "benchmark": "SAM step vs SGD step, same batch",
        "model": args.model,
        "parameters": sum(p.numel() for p in model_sam.parameters()),
        "batch": args.batch,
        "repeats": args.repeats,
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "sgd_step_ms_median": 1e3 * med_sgd,
        "sam_step_ms_median": 1e3 * med_sam,
        "ratio_sam_over_sgd": med_sam / med_sgd,
        "target_ratio_max": 2.2,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{args.model} batch {args.batch}: SGD {1e3 * med_sgd:.2f} ms, SAM {1e3 * med_sam:.2f} ms, "
          f"ratio {med_sam / med_sgd:.3f} (target <= 2.2) -> {args.out}")


if __name__ == "__main__":
    main()
