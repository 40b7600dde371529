"""Curvature along the update κ_u against λ_max on the edge-of-stability recipes, with the cost of each.

Each recipe (``eos-gd``, ``eos-momentum``, ``eos-adam``, at ``--scale``) is trained twice through
:func:`sharpscope.track.train`, identically (tracking never changes training; the benchmark checks that
the two runs' losses agree bit for bit): once with ``update_curvature="hvp"`` and once with ``"fd"``, κ_u
read every ``--update-every`` steps, λ_max by Lanczos every ``measure_every`` steps (the recipe's), and the
hvp run with ``alignment=True`` (the cosine of the update with the top eigenvector at measured steps).

The sharpness compared is the one the optimizer's edge bounds: λ_max(H) against 2/η (GD) and (2+2β)/η
(momentum), λ_max(P⁻¹H) against Adam's (2+2β₁)/(η(1−β₁)); κ_u in the matching form (``kappa``, or
``kappa_preconditioned`` = uᵀHu/uᵀPu for Adam). Reported per recipe:

* ratio κ_u/λ at the measured steps (same θ_t): median and quartiles over the run, its first and second
  half, and from the first step where λ ≥ 0.9·edge ("at the edge");
* κ_u/edge over every read step of those phases, and the largest κ_u in each window between measurements
  against λ at the window's start (does the running maximum track λ?);
* the fd reading against the hvp reading (median relative difference) and the rounding bound of fd;
* cost per reading: products of a λ_max measurement (Lanczos) against 1 product (hvp) or 3 forwards (fd),
  and seconds per reading.

    OMP_NUM_THREADS=1 python benchmarks/bench_update_curvature.py --out benchmarks/results/update_curvature_cpu

One thread; seconds are from a shared machine, the products and ratios are the result.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sharpscope.experiments import get_recipe
from sharpscope.io import jsonsafe
from sharpscope.io.records import Alignment, Measurement, UpdateReading, typed_record
from sharpscope.track import RunDirectory, train

RECIPES = ("eos-gd", "eos-momentum", "eos-adam")
EDGE_FRACTION = 0.9


def quartiles(values: list[float]) -> dict[str, Any]:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return {"n": 0, "median": None, "q1": None, "q3": None}
    q1, med, q3 = np.percentile(finite, [25, 50, 75]).tolist()
    return {"n": len(finite), "median": med, "q1": q1, "q3": q3}


def num(x: Any) -> float:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and x is not None else math.nan


def run_recipe(name: str, scale: str, method: str, every: int, steps: int | None, root: Path) -> dict[str, Any]:
    overrides: dict[str, Any] = {"update_curvature": method, "update_every": every, "alignment": method == "hvp"}
    if steps is not None:
        overrides["steps"] = steps
    cfg = get_recipe(name, scale, overrides)
    start = time.perf_counter()
    summary = train(cfg, root / f"{name}-{method}", force=True)
    seconds = time.perf_counter() - start
    records = [typed_record(r) for r in RunDirectory(root / f"{name}-{method}").read_metrics()]
    return {"config": cfg, "summary": summary, "seconds": seconds, "records": records}


def analyse(name: str, hvp: dict[str, Any], fd: dict[str, Any]) -> dict[str, Any]:
    cfg = hvp["config"]
    meas = {r.step: r for r in hvp["records"] if isinstance(r, Measurement)}
    meas_fd = {r.step: r for r in fd["records"] if isinstance(r, Measurement)}
    same = all(meas[s].train_loss == meas_fd[s].train_loss for s in meas)
    upd = {r.step: r for r in hvp["records"] if isinstance(r, UpdateReading)}
    upd_fd = {r.step: r for r in fd["records"] if isinstance(r, UpdateReading)}
    align = {r.step: r for r in hvp["records"] if isinstance(r, Alignment)}
    adam = any(m.threshold_rule == "adam_edge" for m in meas.values())
    lam_key, kappa_key = ("preconditioned_eigenvalues", "kappa_preconditioned") if adam else ("eigenvalues", "kappa")
    steps = sorted(meas)
    lam = {s: num(meas[s].preconditioned_lambda_max if adam else meas[s].lambda_max) for s in steps}
    edge = {s: num(meas[s].edge) for s in steps}
    rule = next((m.threshold_rule for m in meas.values() if m.thresholds), None)
    reached = next((s for s in steps if lam[s] >= EDGE_FRACTION * edge[s]), None)
    last = max(upd) if upd else 0
    half = last / 2

    def phase(s: int, which: str) -> bool:
        return {"all": True, "first_half": s < half, "second_half": s >= half,
                "at_edge": reached is not None and s >= reached}[which]

    phases = ("all", "first_half", "second_half", "at_edge")
    kappa = {s: num(r.kappa_preconditioned if adam else r.kappa) for s, r in upd.items()}
    kappa_fd = {s: num(r.kappa_preconditioned if adam else r.kappa) for s, r in upd_fd.items()}
    edge_u = {s: num((r.thresholds or {}).get("edge")) for s, r in upd.items()}
    kappa_reached = next((s for s in sorted(kappa) if kappa[s] >= EDGE_FRACTION * edge_u[s]), None)
    near = {p: sum(1 for s in kappa if phase(s, p) and kappa[s] >= EDGE_FRACTION * edge_u[s]) /
            max(1, sum(1 for s in kappa if phase(s, p))) for p in phases}
    ratio = {p: quartiles([kappa[s] / lam[s] for s in steps if s in kappa and phase(s, p)]) for p in phases}
    to_edge = {p: quartiles([kappa[s] / edge_u[s] for s in kappa if phase(s, p)]) for p in phases}
    window_max = []  # max κ_u over [s, next measurement) against λ(s)
    for a, b in zip(steps, steps[1:]):
        inside = [kappa[t] for t in kappa if a <= t < b and math.isfinite(kappa[t])]
        if inside:
            window_max.append((a, max(inside) / lam[a]))
    wmax = {p: quartiles([r for s, r in window_max if phase(s, p)]) for p in phases}
    rel_fd = [abs(kappa_fd[s] - kappa[s]) / abs(kappa[s]) for s in kappa if s in kappa_fd and kappa[s] != 0]
    rounding_rel = [num((upd_fd[s].fd or {}).get("rounding")) / abs(num(upd_fd[s].kappa))
                    for s in upd_fd if num(upd_fd[s].kappa) not in (0.0, math.nan)]
    cos = [abs(a.update_cos[0]) for a in align.values() if a.update_cos]
    lanczos = [num(meas[s].hvps) for s in steps]
    pre_hvps = [num(meas[s].preconditioned_hvps) for s in steps if meas[s].preconditioned_hvps]
    out: dict[str, Any] = {
        "recipe": name, "scale": cfg.scale, "steps": cfg.steps, "measure_every": cfg.measure_every,
        "update_every": cfg.update_every, "optimizer": cfg.optimizer, "optimizer_kwargs": cfg.optimizer_kwargs,
        "rule": rule, "edge": statistics.median(edge.values()), "compared": f"{kappa_key} / {lam_key}[0]",
        "trajectories_identical": same, "edge_reached_at_step": reached,
        "kappa_reaches_edge_at_step": kappa_reached, "fraction_kappa_at_edge": near,
        "ratio_kappa_over_lambda": ratio, "kappa_over_edge": to_edge, "window_max_kappa_over_lambda": wmax,
        "lambda_over_edge": {p: quartiles([lam[s] / edge[s] for s in steps if phase(s, p)]) for p in phases},
        "abs_cos_update_top_eigenvector": quartiles(cos),
        "fd_vs_hvp_relative_difference": quartiles(rel_fd),
        "fd_rounding_bound_relative": quartiles(rounding_rel),
        "cost_per_reading": {
            "lambda_max_lanczos_hvps": statistics.mean(lanczos),
            "preconditioned_lanczos_hvps": statistics.mean(pre_hvps) if pre_hvps else None,
            "kappa_hvp": {"hvps": 1, "forwards": 0,
                          "seconds": statistics.mean(num((r.cost or {}).get("seconds")) for r in upd.values())},
            "kappa_fd": {"hvps": 0, "forwards": 3,
                         "seconds": statistics.mean(num((r.cost or {}).get("seconds")) for r in upd_fd.values())},
            "lambda_max_seconds": statistics.mean(num(meas[s].cost_seconds) for s in steps)},
        "readings": {"lambda": len(steps), "kappa_hvp": len(upd), "kappa_fd": len(upd_fd)},
        "run_seconds": {"hvp": hvp["seconds"], "fd": fd["seconds"]},
        "series": {"measured_steps": steps, "lambda": [lam[s] for s in steps],
                   "kappa_steps": sorted(kappa), "kappa_hvp": [kappa[s] for s in sorted(kappa)],
                   "kappa_fd": [kappa_fd.get(s, math.nan) for s in sorted(kappa)]},
    }
    if adam:  # the unpreconditioned pair too, for reference
        plain = [num(upd[s].kappa) / num(meas[s].lambda_max)
                 for s in steps if s in upd]
        out["ratio_plain_kappa_over_lambda_max_H"] = quartiles(plain)
    return out


def fmt(q: dict[str, Any], digits: str = ".2f") -> str:
    if not q or q.get("median") is None:
        return "–"
    return f"{q['median']:{digits}} [{q['q1']:{digits}}, {q['q3']:{digits}}] (n={q['n']})"


def markdown(result: dict[str, Any]) -> str:
    lines = [f"# Curvature along the update κ_u vs λ_max ({result['scale']} scale recipes)", "",
             f"Command: `{result['command']}`  ", f"{result['platform']}; torch {result['torch']}; 1 thread.", "",
             "κ_u = uᵀHu/‖u‖² (Adam: uᵀHu/uᵀPu, P = diag(√v̂+ε) of the step) with u = θ_{t+1} − θ_t, read every "
             "step; λ = λ_max(H) (Adam: λ_max(P⁻¹H)) by Lanczos at the recipe's measured steps. Cells: median "
             "[q1, q3] (n). \"at edge\": from the first measured step with λ ≥ 0.9·edge.", ""]
    for r in result["recipes"]:
        c = r["cost_per_reading"]
        lines += [f"## {r['recipe']} ({r['optimizer']} {json.dumps(r['optimizer_kwargs'])}, {r['steps']} steps, "
                  f"λ every {r['measure_every']}, κ_u every {r['update_every']})", "",
                  f"Edge: {r['rule']} = {r['edge']:.4g}, compared: {r['compared']}; edge reached (λ ≥ 0.9·edge) at "
                  f"step {r['edge_reached_at_step']}, κ_u ≥ 0.9·edge first at step {r['kappa_reaches_edge_at_step']}; hvp and fd runs identical: {r['trajectories_identical']}.", "",
                  "| phase | κ_u/λ (same step) | max κ_u in window / λ | κ_u/edge | readings κ_u ≥ 0.9·edge | λ/edge |",
                  "|---|---|---|---|---:|---|"]
        for p, label in (("all", "whole run"), ("first_half", "first half"), ("second_half", "second half"),
                         ("at_edge", "at edge")):
            lines.append(f"| {label} | {fmt(r['ratio_kappa_over_lambda'][p])} | "
                         f"{fmt(r['window_max_kappa_over_lambda'][p])} | {fmt(r['kappa_over_edge'][p])} | "
                         f"{r['fraction_kappa_at_edge'][p]:.0%} | "
                         f"{fmt(r['lambda_over_edge'][p])} |")
        lines += ["", f"|cos(u, v₁)| at measured steps: {fmt(r['abs_cos_update_top_eigenvector'])}.  ",
                  f"fd vs hvp relative difference: {fmt(r['fd_vs_hvp_relative_difference'], '.1e')}; fd rounding "
                  f"bound / κ: {fmt(r['fd_rounding_bound_relative'], '.1e')}.  "]
        if "ratio_plain_kappa_over_lambda_max_H" in r:
            lines.append(f"Unpreconditioned uᵀHu/‖u‖² / λ_max(H): {fmt(r['ratio_plain_kappa_over_lambda_max_H'])}.  ")
        pre = c["preconditioned_lanczos_hvps"]
        lines += [f"Cost per reading: λ_max {c['lambda_max_lanczos_hvps']:.1f} HVPs"
                  + (f" (+ {pre:.1f} for λ_max(P⁻¹H))" if pre else "")
                  + f", {c['lambda_max_seconds'] * 1e3:.1f} ms; κ_u hvp 1 HVP, {c['kappa_hvp']['seconds'] * 1e3:.2f} ms; "
                  f"κ_u fd 3 forwards, {c['kappa_fd']['seconds'] * 1e3:.2f} ms. Run seconds (hvp / fd run): "
                  f"{r['run_seconds']['hvp']:.1f} / {r['run_seconds']['fd']:.1f}.", ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="cpu", choices=("smoke", "cpu"))
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=RECIPES)
    parser.add_argument("--update-every", type=int, default=1)
    parser.add_argument("--steps", type=int, default=None, help="override the recipes' step counts")
    parser.add_argument("--out", default=None, help="write OUT.json and OUT.md")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="bench_update_curvature_"))
    try:
        recipes = []
        for name in args.recipes:
            hvp = run_recipe(name, args.scale, "hvp", args.update_every, args.steps, root)
            fd = run_recipe(name, args.scale, "fd", args.update_every, args.steps, root)
            recipes.append(analyse(name, hvp, fd))
            print(f"{name}: {fmt(recipes[-1]['ratio_kappa_over_lambda']['all'])} κ_u/λ; "
                  f"{hvp['seconds']:.0f}+{fd['seconds']:.0f} s", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    command = "OMP_NUM_THREADS=1 python benchmarks/bench_update_curvature.py " + " ".join(argv)
    result = {"command": command.strip(), "scale": args.scale, "platform": platform.platform(),
              "torch": torch.__version__, "recipes": recipes}
    text = markdown(result)
    print(text)
    if args.out:
        Path(args.out).with_suffix(".json").write_text(jsonsafe.dumps(result, indent=1))
        Path(args.out).with_suffix(".md").write_text(text)
    return result


if __name__ == "__main__":
    main()
