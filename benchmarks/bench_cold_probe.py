"""Cold-probe overheads: what a default λ_max probe pays before and besides its Lanczos products, against
PyHessian's default ``hessian(model, criterion, data=(x, y), cuda=False).eigenvalues()``, in one process.

Two settings:

* ``eos`` — the ``eos-cifar5k`` recipe's fully connected tanh net (3072-200-200-10, MSE) on the first
  5 000 CIFAR-10 images, trained by plain full-batch GD at the recipe's η for ``--train-steps`` steps
  (the checkpoint is kept in ``--checkpoint`` and reused); needs ``../shared/data/cifar10_train16k.npz``.
* ``cnn`` — the engine benchmark's small CNN (channels 16/32, cross entropy) on the first 1 000
  CIFAR-10 images (synthetic images when the file is absent), 100 SGD steps.

Each repetition, in alternating order, runs from a cold start (the process' remembered product-mode
choices and the on-disk choice cache emptied; a fresh model object from the same weights):

1. ``probe(model, loss, x, y)`` at its defaults (``ProbeSettings()``);
2. ``lanczos(CurvatureSettings().hessian(Objective(model, loss, (x, y))), k=1)`` (the library's defaults);
   then the same again as a new process would run it once an earlier one has stored its timed product-mode
   choice on disk (only the in-process memory emptied; the first repetition's run stored it);
3. PyHessian: ``hessian(model, loss, data=(x, y), cuda=False)`` and ``.eigenvalues()`` (maxIter=100, tol=1e-3).

Sharpscope's time is split into stages by timing the library's own functions (exclusive times: a
stage nested in another is counted once, in the inner one): the input check, the objective's set-up
and validation, loss and gradient norm, product-mode selection, graph measurement and cache,
memory budget, the first product, the other products and Lanczos' own arithmetic. Ratios to
PyHessian's total are taken within each repetition; the reported ratio is the median. The error of
each λ_max is against a reference Lanczos run at tol 1e-7.

    OMP_NUM_THREADS=1 python benchmarks/bench_cold_probe.py --reps 3 --out benchmarks/results/cold_probe_cpu
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

import sharpscope.curvature.algorithms.lanczos as lanczos_module
import sharpscope.curvature.operators.hessian as hessian_module
import sharpscope.probe as probe_module
from sharpscope import HessianOperator, Objective, lanczos
from sharpscope.curvature.operators.objective import Objective as ObjectiveClass
from sharpscope.curvature.settings import CurvatureSettings
from sharpscope.losses import get_loss
from sharpscope.models import build_model
from sharpscope.probe import ProbeSettings

REPO = Path(__file__).resolve().parents[1]
CIFAR = REPO / ".." / "shared" / "data" / "cifar10_train16k.npz"


# ----------------------------------------------------------------------------------------- models
def eos_setting(checkpoint: Path, steps: int) -> tuple[nn.Module, Callable[[Tensor, Tensor], Tensor], Tensor, Tensor, str]:
    from sharpscope.experiments.recipes import RECIPES
    from sharpscope.track.build import build_data
    from sharpscope.track.build import build_model as build_recipe_model

    cfg = RECIPES["eos-cifar5k"]("cpu")
    train, _ = build_data(cfg)
    model, _ = build_recipe_model(cfg, torch.device("cpu"), torch.float32)
    loss_fn = get_loss(cfg.loss)
    x, y = train.x, train.y
    lr = float(cfg.optimizer_kwargs["lr"])
    saved = torch.load(checkpoint, weights_only=True) if checkpoint.is_file() else None
    if saved is not None and saved.get("steps") == steps:
        model.load_state_dict(saved["state_dict"])
    else:
        for _ in range(steps):  # full-batch GD, the recipe's optimizer and step size
            model.zero_grad()
            loss_fn(model(x), y).backward()
            with torch.no_grad():
                for p in model.parameters():
                    p -= lr * p.grad  # type: ignore[operator]
        model.zero_grad(set_to_none=True)
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": model.state_dict(), "steps": steps}, checkpoint)
    return model, loss_fn, x, y, f"eos-cifar5k fc-tanh 3072-200-200-10, MSE, {len(x)} images, GD η={lr}, {steps} steps"


def cnn_setting() -> tuple[nn.Module, Callable[[Tensor, Tensor], Tensor], Tensor, Tensor, str]:
    n = 1000
    if CIFAR.is_file():
        arrays = np.load(CIFAR)
        x = torch.from_numpy(arrays["x"][:n]).permute(0, 3, 1, 2).float() / 255
        mean, std = x.mean(dim=(0, 2, 3), keepdim=True), x.std(dim=(0, 2, 3), keepdim=True)
        x, y, source = (x - mean) / std, torch.from_numpy(arrays["y"][:n]).long(), "CIFAR-10"
    else:
        gen = torch.Generator().manual_seed(0)
        x, y, source = torch.randn(n, 3, 32, 32, generator=gen), torch.randint(0, 10, (n,), generator=gen), "synthetic"
    torch.manual_seed(0)
    model = build_model("cnn", in_channels=3, num_classes=10, channels=(16, 32))
    gen = torch.Generator().manual_seed(1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(100):
        idx = torch.randint(0, n, (128,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return model.eval(), nn.functional.cross_entropy, x, y, f"small CNN (16/32 channels), cross entropy, {n} {source} images, 100 SGD steps"


# ----------------------------------------------------------------------------------------- stages
class StageClock:
    """Exclusive seconds per stage: the time of a call minus the time of the staged calls inside it."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._stack: list[list[float]] = []

    def wrap(self, name: str | Callable[..., str], fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            label = name(*args, **kwargs) if callable(name) else name
            self._stack.append([0.0])
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                total = time.perf_counter() - start
                inner = self._stack.pop()[0]
                self.seconds[label] = self.seconds.get(label, 0.0) + total - inner
                self.calls[label] = self.calls.get(label, 0) + 1
                if self._stack:
                    self._stack[-1][0] += total

        return wrapped


@contextlib.contextmanager
def staged(clock: StageClock) -> Iterator[None]:
    """Patch the library's stage functions with timed wrappers for the duration."""
    products = [0]

    def product_label(*_: Any, **__: Any) -> str:
        products[0] += 1
        return "first product" if products[0] == 1 else "other products"

    patches: list[tuple[object, str, Callable[..., Any]]] = [
        (probe_module, "check_model_fits", "input check"),
        (ObjectiveClass, "__init__", "objective set-up and validation"),
        (ObjectiveClass, "loss", "loss and gradient norm"),
        (ObjectiveClass, "gradient", "loss and gradient norm"),
        (HessianOperator, "_pick_mode", "mode selection (timing trials)"),
        (HessianOperator, "_decide_cache", "graph measurement and cache"),
        (lanczos_module, "resolve_budget", "memory budget"),
        (HessianOperator, "_products", product_label),
        (lanczos_module, "lanczos", "Lanczos arithmetic"),
        (probe_module, "lanczos", "Lanczos arithmetic"),
        (probe_module, "probe", "other"),
    ]  # type: ignore[list-item]
    saved = []
    for owner, attr, label in patches:
        original = getattr(owner, attr)
        saved.append((owner, attr, original))
        setattr(owner, attr, clock.wrap(label, original))  # type: ignore[arg-type]
    try:
        yield
    finally:
        for owner, attr, original in reversed(saved):
            setattr(owner, attr, original)


def forget_choices() -> None:
    """A cold start: no product-mode choice remembered in this process or on disk."""
    hessian_module._TIMED_CHOICES.clear()
    try:
        from sharpscope.curvature.operators import mode_cache
    except ImportError:  # a version without the on-disk cache
        return
    mode_cache.forget()


# ----------------------------------------------------------------------------------------- runs
def fresh(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model)


def run_probe(model: nn.Module, loss_fn: Any, x: Tensor, y: Tensor) -> dict[str, Any]:
    forget_choices()
    m = fresh(model)
    clock = StageClock()
    start = time.perf_counter()
    with staged(clock):
        report = probe_module.probe(m, loss_fn, x, y, ProbeSettings())
    total = time.perf_counter() - start
    clock.seconds["unstaged"] = total - sum(clock.seconds.values())
    s = report.settings
    return {"seconds": total, "stages": clock.seconds, "calls": clock.calls, "value": float(report.top.eigenvalues[0]),
            "hvps": report.top.hvps, "steps": report.top.settings["steps"], "hvp_mode": s["hvp_mode"],
            "mode_selection": s["mode_selection"]}


def run_library(model: nn.Module, loss_fn: Any, x: Tensor, y: Tensor, *, keep_disk: bool = False) -> dict[str, Any]:
    if keep_disk:  # a new process: nothing remembered in memory, the on-disk choice (stored by an earlier run) kept
        hessian_module._TIMED_CHOICES.clear()
    else:
        forget_choices()
    m = fresh(model)
    clock = StageClock()
    start = time.perf_counter()
    with staged(clock):
        op = CurvatureSettings().hessian(ObjectiveClass(m, loss_fn, (x, y)))
        result = lanczos_module.lanczos(op, k=1)
    total = time.perf_counter() - start
    clock.seconds["unstaged"] = total - sum(clock.seconds.values())
    return {"seconds": total, "stages": clock.seconds, "calls": clock.calls, "value": float(result.eigenvalues[0]),
            "hvps": result.hvps, "steps": result.settings["steps"], "hvp_mode": op.mode,
            "mode_selection": op.selection}


def run_pyhessian(model: nn.Module, loss_fn: Any, x: Tensor, y: Tensor) -> dict[str, Any]:
    import pyhessian

    m = fresh(model)
    torch.manual_seed(0)
    start = time.perf_counter()
    h = pyhessian.hessian(m, loss_fn, data=(x, y), cuda=False)
    built = time.perf_counter()
    calls = [0]
    ph = sys.modules["pyhessian.hessian"]  # the module (the package exports the class under the same name)

    original = ph.hessian_vector_product

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return original(*args, **kwargs)

    ph.hessian_vector_product = counted
    try:
        values, _ = h.eigenvalues()
    finally:
        ph.hessian_vector_product = original
    end = time.perf_counter()
    return {"seconds": end - start, "stages": {"graph (forward, backward with create_graph)": built - start,
                                               "power iteration": end - built},
            "value": float(values[0]), "hvps": calls[0]}


def reference(model: nn.Module, loss_fn: Any, x: Tensor, y: Tensor) -> float:
    op = HessianOperator(Objective(fresh(model), loss_fn, (x, y), batch_size=1000), mode="rev-rev", cache_graphs=True)
    return float(lanczos(op, k=1, tol=1e-7, max_iter=300, seed=1).eigenvalues[0])


RUNS = {"sharpscope probe()": run_probe, "sharpscope lanczos(default operator)": run_library,
        "sharpscope lanczos(default operator), mode choice on disk":
            lambda *a: run_library(*a, keep_disk=True),
        "pyhessian eigenvalues()": run_pyhessian}


def measure(name: str, setup: tuple[nn.Module, Any, Tensor, Tensor, str], reps: int) -> dict[str, Any]:
    model, loss_fn, x, y, description = setup
    dim = sum(p.numel() for p in model.parameters())
    truth = reference(model, loss_fn, x, y)
    reps_out: list[dict[str, Any]] = []
    for rep in range(reps):
        order = list(RUNS) if rep % 2 == 0 else list(reversed(RUNS))
        row: dict[str, Any] = {"order": order}
        for label in order:
            row[label] = RUNS[label](model, loss_fn, x, y)
            row[label]["relative_error"] = abs(row[label]["value"] - truth) / abs(truth)
            print(f"[{name} rep {rep}] {label}: {row[label]['seconds']:.2f} s, {row[label]['hvps']} HVPs, "
                  f"λ={row[label]['value']:.6g}", flush=True)
        reps_out.append(row)
    base = "pyhessian eigenvalues()"
    summary: dict[str, Any] = {}
    for label in RUNS:
        ratios = [r[label]["seconds"] / r[base]["seconds"] for r in reps_out]
        entry: dict[str, Any] = {
            "median_seconds": statistics.median(r[label]["seconds"] for r in reps_out),
            "median_ratio_to_pyhessian": statistics.median(ratios), "ratios": ratios,
            "hvps": [r[label]["hvps"] for r in reps_out],
            "median_relative_error": statistics.median(r[label]["relative_error"] for r in reps_out)}
        stages = sorted({s for r in reps_out for s in r[label]["stages"]})
        entry["stage_median_seconds"] = {s: statistics.median(r[label]["stages"].get(s, 0.0) for r in reps_out)
                                         for s in stages}
        entry["stage_median_ratio_to_pyhessian"] = {
            s: statistics.median(r[label]["stages"].get(s, 0.0) / r[base]["seconds"] for r in reps_out) for s in stages}
        entry["stage_median_share"] = {
            s: statistics.median(r[label]["stages"].get(s, 0.0) / r[label]["seconds"] for r in reps_out) for s in stages}
        fixed = [s for s in stages if s not in ("first product", "other products", "Lanczos arithmetic",
                                                "power iteration", "graph (forward, backward with create_graph)",
                                                "graph measurement and cache", "unstaged")]
        entry["fixed_stages"] = fixed
        entry["fixed_share_median"] = statistics.median(
            sum(r[label]["stages"].get(s, 0.0) for s in fixed) / r[label]["seconds"] for r in reps_out)
        summary[label] = entry
    return {"setting": description, "parameters": dim, "examples": len(x), "reference_lambda_max": truth,
            "summary": summary, "repetitions": reps_out}


def markdown(result: dict[str, Any]) -> str:
    lines = ["# Cold default probe against PyHessian's default (CPU)", "",
             f"Command: `{result['command']}`", "", result["environment"], "",
             "Ratios are to PyHessian's total time in the same repetition (order alternated), medians over "
             f"{result['reps']} repetitions. The \"fixed\" share counts every stage except products, the graph "
             "build/cache and Lanczos' own arithmetic.", ""]
    for name, res in result["settings"].items():
        lines += [f"## {name}: {res['setting']}", "",
                  f"{res['parameters']:,} parameters, {res['examples']:,} examples; reference λ_max = "
                  f"{res['reference_lambda_max']:.6g} (Lanczos, tol 1e-7).", "",
                  "| run | median s | median ratio to PyHessian | HVPs | median relative error | fixed share |",
                  "|---|---|---|---|---|---|"]
        for label, e in res["summary"].items():
            lines.append(f"| {label} | {e['median_seconds']:.2f} | {e['median_ratio_to_pyhessian']:.2f} | "
                         f"{', '.join(map(str, e['hvps']))} | {e['median_relative_error']:.1e} | "
                         f"{e['fixed_share_median']:.1%} |")
        lines += ["", "| run | stage | median s | median ratio to PyHessian total | median share of run |",
                  "|---|---|---|---|---|"]
        for label, e in res["summary"].items():
            for stage, sec in e["stage_median_seconds"].items():
                lines.append(f"| {label} | {stage} | {sec:.3f} | {e['stage_median_ratio_to_pyhessian'][stage]:.3f} | "
                             f"{e['stage_median_share'][stage]:.1%} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", default="eos,cnn", help="comma-separated: eos, cnn")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--train-steps", type=int, default=1000, help="GD steps of the eos checkpoint")
    parser.add_argument("--checkpoint", default=str(Path(tempfile.gettempdir()) / "sharpscope_eos_cifar5k.pt"))
    parser.add_argument("--out", default="benchmarks/results/cold_probe_cpu")
    args = parser.parse_args()
    cache = tempfile.mkdtemp(prefix="sharpscope-cold-")  # an empty choice cache, emptied again before every run
    os.environ.setdefault("SHARPSCOPE_CACHE_DIR", cache)
    result: dict[str, Any] = {
        "command": "OMP_NUM_THREADS=" + os.environ.get("OMP_NUM_THREADS", "?") + " python " + " ".join(sys.argv),
        "environment": f"torch {torch.__version__}, {platform.processor() or 'cpu'}, {torch.get_num_threads()} CPU "
                       f"thread(s), {time.strftime('%Y-%m-%d')}; a shared machine, so seconds vary between runs",
        "reps": args.reps, "settings": {}}
    chosen = [s for s in args.settings.split(",") if s]
    for name in chosen:
        if name == "eos":
            if not CIFAR.is_file():
                print("eos: ../shared/data/cifar10_train16k.npz is absent; skipped", flush=True)
                continue
            setup = eos_setting(Path(args.checkpoint), args.train_steps)
        elif name == "cnn":
            setup = cnn_setting()
        else:
            raise SystemExit(f"unknown setting {name!r}; choose eos, cnn")
        result["settings"][name] = measure(name, setup, args.reps)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(result, indent=2, default=str) + "\n")
        out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
