"""The population study (Jiang et al. 2019; Andriushchenko et al. 2023): whether sharpness measures rank a
population of trained models by their generalisation.

Every model of a grid over learning rate × batch size × SAM ρ (0: plain SGD) × weight decay (× width) is
trained from seed 0 with momentum SGD (0.9) until its training accuracy reaches ``target`` (checked every
``check_every`` steps on the whole training set) or the step cap; models that do not reach it (or diverge)
are reported and left out of the rankings, so the ranked models are compared at equal fit. Each finished
model is then measured once on a fixed probe set (the first ``probe_n`` training examples; stored beside
the run in ``population-measures.json`` and reused on a rerun with the same settings): the training and
test loss and accuracy, the generalisation gaps (accuracy and loss), λ_max (Lanczos), tr(H) (Hutch++),
the Jacobian trace, worst-case and average-case adaptive sharpness in ℓ2 and ℓ∞ at two radii,
worst-case adaptive m-sharpness, and PAC-Bayes flatness (plain and magnitude-aware), each with its
standard error, cost and settings, and the per-example test correctness (so accuracies can be paired).

The results rank the included models by each measure against the accuracy gap and against the test
error: Kendall's τ_b with a bootstrap 95% interval over models and a permutation p-value, Jiang et al.'s
granulated τ per axis and Ψ, and, before any of it, the smallest |τ| the population can tell from 0 (a
τ below it is inconclusive, not "no correlation").

Scales: ``smoke`` — eight MLPs (lr × ρ × width) on 256 MNIST-1D examples (no shared data), seconds; ``cpu`` — 32 CNNs
(no normalisation, 8-16 or 16-32 channels) on the first 1 000 CIFAR-10 training images of the shared
subset, the 2 000-image test set, lr {0.01, 0.03} × batch {32, 128} × ρ {0, 0.05} × weight decay
{0, 5e-4} × width {1, 2}, stop at 99% training accuracy (cap 3 000 steps), probe 512 images; ``gpu`` —
the same grid on 8 000 images with 4× wider networks. Without the CIFAR-10 files the cpu and gpu scales
use MNIST-1D and MLPs.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from sharpscope.curvature import HessianOperator, Objective, hutchpp, lanczos
from sharpscope.curvature.settings import RUN_DEFAULTS
from sharpscope.data.root import CIFAR10_TRAIN
from sharpscope.errors import ConfigError
from sharpscope.experiments import rank_correlation as rc
from sharpscope.experiments import statistics
from sharpscope.experiments.recipes import cifar_data, fc, mnist1d_data
from sharpscope.experiments.studies.framework import Build, DrawnFigures, Stage, Study
from sharpscope.io import jsonsafe
from sharpscope.io.atomic import atomic_write_bytes
from sharpscope.io.records import RunSummary
from sharpscope.io.studysummary import StudySummary
from sharpscope.losses import get_loss
from sharpscope.measures import SharpnessSettings, measure
from sharpscope.measures.settings import Norm
from sharpscope.track import TrainConfig

AXES = ("lr", "batch", "rho", "wd", "width")
AXIS_NAMES = {"lr": "lr", "batch": "batch", "rho": "SAM ρ", "wd": "weight decay", "width": "width"}  # in captions
DATASETS = {"cifar10": ("CIFAR-10", "CNN family without normalisation"), "mnist1d": ("MNIST-1D", "MLP family")}
"""The data a run's name starts with: its name in captions and the model family trained on it."""
SEED = 0  # of every model
MEASURES_FILE = "population-measures.json"
TABLE_FILE = "population-table.md"


@dataclass(frozen=True)
class PopScale:
    """A scale of the study: data, grid, stop rule and measurement budget."""

    n: int
    test_n: int
    channels: tuple[int, ...]
    grid: tuple[tuple[float, ...], tuple[int, ...], tuple[float, ...], tuple[float, ...], tuple[int, ...]]
    target: float
    max_steps: int
    check_every: int
    probe_n: int
    ascent_steps: int
    samples: int
    matvecs: int
    lanczos_iter: int
    m: int
    l2_rhos: tuple[float, ...]
    linf_rhos: tuple[float, ...]
    resamples: int


SCALES = {
    "smoke": PopScale(n=256, test_n=512, channels=(16,), grid=((0.05, 0.1), (32,), (0.0, 0.05), (0.0,), (1, 2)),
                      target=0.9, max_steps=400, check_every=20, probe_n=64, ascent_steps=5, samples=4, matvecs=9,
                      lanczos_iter=20, m=16, l2_rhos=(0.5,), linf_rhos=(0.01,), resamples=500),
    "cpu": PopScale(n=1000, test_n=2000, channels=(8, 16), grid=((0.01, 0.03), (32, 128), (0.0, 0.05), (0.0, 5e-4),
                                                                 (1, 2)),
                    target=0.99, max_steps=3000, check_every=50, probe_n=512, ascent_steps=20, samples=16,
                    matvecs=30, lanczos_iter=50, m=128, l2_rhos=(0.1, 0.5), linf_rhos=(0.001, 0.01), resamples=2000),
    "gpu": PopScale(n=8000, test_n=2000, channels=(32, 64), grid=((0.01, 0.03), (32, 128), (0.0, 0.05), (0.0, 5e-4),
                                                                  (1, 2)),
                    target=0.99, max_steps=20000, check_every=100, probe_n=2048, ascent_steps=20, samples=32,
                    matvecs=99, lanczos_iter=100, m=128, l2_rhos=(0.1, 0.5), linf_rhos=(0.001, 0.01), resamples=4000),
}


def grid(scale: str) -> list[dict[str, Any]]:
    """The hyperparameters of every model at ``scale`` (keys :data:`AXES`)."""
    return [dict(zip(AXES, values)) for values in itertools.product(*SCALES[scale].grid)]


def stage_name(c: Mapping[str, Any]) -> str:
    """The run name of one grid point, e.g. ``lr0.05-b32-rho0-wd0-w16``."""
    return f"lr{c['lr']:g}-b{c['batch']}-rho{c['rho']:g}-wd{c['wd']:g}-w{c['width']}"


def model_config(scale: str, c: Mapping[str, Any]) -> TrainConfig:
    """The training run of the model with hyperparameters ``c`` at ``scale`` (see the module docstring)."""
    sc = SCALES[scale]
    widths = [int(w * c["width"]) for w in sc.channels]
    data = cifar_data(sc.n, flatten=False) if scale != "smoke" else None
    if data is not None:
        data["test_n"] = sc.test_n
        model = {"name": "cnn", "kwargs": {"in_channels": 3, "num_classes": 10, "channels": widths, "norm": None,
                                           "image_size": 32}}
    else:
        data = mnist1d_data(sc.n, sc.test_n)
        model = fc(40, widths, "relu")
    kwargs: dict[str, Any] = {"lr": c["lr"], "momentum": 0.9, "weight_decay": c["wd"]}
    optimizer = "sgd"
    if c["rho"] > 0:
        optimizer, kwargs = "sam", {**kwargs, "rho": c["rho"]}
    return TrainConfig(model=model, **data, loss="ce", optimizer=optimizer, optimizer_kwargs=kwargs,
                       batch_size=c["batch"], probe_n=None, physical_batch_size=1000, steps=sc.max_steps,
                       stop_at_train_acc=sc.target, measure_every=sc.check_every, checkpoint_every=sc.check_every,
                       seed=SEED, probe_seed=0, device="auto" if scale == "gpu" else "cpu",
                       curvature=RUN_DEFAULTS.replace(k=1, max_iter=2))


def stages(scale: str) -> list[Stage]:
    """One run per point of the grid."""
    def build(c: dict[str, Any]) -> Build:
        return lambda sc, _: model_config(sc, c)

    return [Stage(stage_name(c), build(c)) for c in grid(scale)]


# ----------------------------------------------------------------------------------------- measuring
def measure_plan(sc: PopScale) -> dict[str, SharpnessSettings]:
    """The sharpness measures of every model: name → settings (the name says the registry measure)."""
    base = SharpnessSettings(steps=sc.ascent_steps, samples=sc.samples, seed=0)
    plan: dict[str, SharpnessSettings] = {"jacobian": SharpnessSettings(seed=0)}
    norms: tuple[tuple[Norm, tuple[float, ...]], ...] = (("l2", sc.l2_rhos), ("linf", sc.linf_rhos))
    for norm, rhos in norms:
        for rho in rhos:
            for kind in ("worst", "average"):
                plan[f"{kind}-adaptive-{norm}-{rho:g}"] = replace(base, rho=rho, norm=norm, adaptive=True)
    plan[f"worst-adaptive-l2-{sc.l2_rhos[0]:g}-m{sc.m}"] = replace(base, rho=sc.l2_rhos[0], adaptive=True, m=sc.m)
    plan["pacbayes"] = base
    plan["pacbayes-adaptive"] = replace(base, adaptive=True)
    return plan


def _registry_name(name: str) -> str:
    return name.split("-")[0]


def _plan_key(sc: PopScale) -> str:
    text = json.dumps({"scale": asdict(sc), "plan": {k: asdict(v) for k, v in measure_plan(sc).items()}},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _scale_of(cfg: TrainConfig) -> PopScale:
    if cfg.scale not in SCALES:
        raise ValueError(f"run {cfg.recipe} has no population scale ({cfg.scale!r})")
    return SCALES[cfg.scale]


@torch.no_grad()
def _evaluate_set(model: torch.nn.Module, loss_fn: Callable[..., torch.Tensor], x: torch.Tensor,
                  y: torch.Tensor) -> tuple[float, float, list[int]]:
    losses, correct = [], []
    for s in range(0, len(x), 1000):
        out = model(x[s:s + 1000])
        losses.append(float(loss_fn(out, y[s:s + 1000])) * len(out))
        correct += (out.argmax(dim=1) == y[s:s + 1000]).int().tolist()
    return sum(losses) / len(x), sum(correct) / len(x), correct


def measure_model(run_dir: Path) -> dict[str, Any]:
    """Every measurement of the model in ``run_dir`` (its final checkpoint), cached in
    ``run_dir/population-measures.json`` for the same plan."""
    from sharpscope.track.build import build_data, build_model, load_initial_weights

    cfg = TrainConfig.from_dict(json.loads((run_dir / "config.json").read_text(encoding="utf-8")))
    sc = _scale_of(cfg)
    key, cache = _plan_key(sc), run_dir / MEASURES_FILE
    if cache.is_file():
        stored = jsonsafe.loads(cache.read_text(encoding="utf-8"))
        if stored.get("key") == key:
            return dict(stored["measured"])
    started = time.perf_counter()
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else "cpu")
    model, spec = build_model(cfg, device, torch.float32)
    where = load_initial_weights(str(run_dir), model, spec)
    model.eval()
    train_set, test_set = build_data(cfg)
    if test_set is None:
        raise ValueError(f"run {run_dir} has no test set")
    loss_fn = get_loss(cfg.loss)
    x, y = train_set.x.to(device), train_set.y.to(device)
    tx, ty = test_set.x.to(device), test_set.y.to(device)
    train_loss, train_acc, _ = _evaluate_set(model, loss_fn, x, y)
    test_loss, test_acc, correct = _evaluate_set(model, loss_fn, tx, ty)
    n = min(sc.probe_n, len(x))
    objective = Objective(model, loss_fn, (x[:n], y[:n]), batch_size=1000)
    op = HessianOperator(objective)
    eig = lanczos(op, k=1, tol=1e-3, max_iter=sc.lanczos_iter, seed=0, return_eigenvectors=False)
    tr = hutchpp(op, sc.matvecs, seed=0)
    measures: dict[str, Any] = {
        "lambda_max": {"value": float(eig.eigenvalues[0]), "stderr": None, "residual": float(eig.residuals[0]),
                       "converged": bool(eig.converged), "hvps": eig.hvps, "seconds": eig.seconds,
                       "settings": {"tol": 1e-3, "max_iter": sc.lanczos_iter, "seed": 0}},
        "trace": {"value": tr.estimate, "stderr": tr.stderr, "hvps": tr.hvps, "seconds": tr.seconds,
                  "settings": {"method": "hutch++", "matvecs": sc.matvecs, "seed": 0}},
    }
    for name, settings in measure_plan(sc).items():
        measures[name] = measure(_registry_name(name), objective, settings).to_dict()
    measured = {"train_loss": train_loss, "train_acc": train_acc, "test_loss": test_loss, "test_acc": test_acc,
                "gap_acc": train_acc - test_acc, "gap_loss": test_loss - train_loss, "test_error": 1 - test_acc,
                "test_correct": "".join(map(str, correct)), "probe_n": n, "checkpoint": where,
                "measures": measures, "device": device.type, "seconds": time.perf_counter() - started}
    atomic_write_bytes(cache, (jsonsafe.dumps({"key": key, "measured": measured}, indent=1) + "\n").encode())
    return measured


# ----------------------------------------------------------------------------------------- ranking
def _axes_of(name: str) -> dict[str, Any]:
    for scale in SCALES:
        for c in grid(scale):
            if stage_name(c) == name:
                return c
    raise ValueError(f"{name!r} is not a population model")


def rank_measures(models: Sequence[Mapping[str, Any]], *, resamples: int, seed: int = 0) -> dict[str, Any]:
    """:func:`~sharpscope.experiments.rank_correlation.rank_measures` over the study's axes."""
    return rc.rank_measures(models, axes=AXES, resamples=resamples, seed=seed)


def sam_pairs(models: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """SAM against its SGD twin (the model equal in every other axis, ρ = 0), on the same test examples:
    the paired accuracy difference with McNemar's exact p-value (:func:`statistics.paired_accuracy`)."""
    plain = {tuple(v for k, v in m["axes"].items() if k != "rho"): m for m in models
             if m["axes"]["rho"] == 0 and "test_correct" in m}
    out = []
    for m in models:
        twin = plain.get(tuple(v for k, v in m["axes"].items() if k != "rho"))
        if m["axes"]["rho"] == 0 or twin is None or "test_correct" not in m:
            continue
        d = statistics.paired_accuracy([int(c) for c in m["test_correct"]], [int(c) for c in twin["test_correct"]])
        out.append({"sam": m["name"], "sgd": twin["name"], "difference": d.estimate, "interval": [d.low, d.high],
                    "p_value": d.p_value, "method": d.method})
    return out


def table(ranked: Mapping[str, Any], excluded: Sequence[str]) -> str:
    """The results as a Markdown table, headed by the MDE (:func:`~sharpscope.experiments.rank_correlation.ranking_table`)."""
    return rc.ranking_table(ranked, excluded)


def evaluate(dirs: Mapping[str, Path]) -> dict[str, Any]:
    """Each model's gap, test error and measures, and their rank correlations (P1)."""
    models, excluded = [], []
    resamples = 500
    for name, path in dirs.items():
        summary = RunSummary.from_json(json.loads((path / "summary.json").read_text(encoding="utf-8")))
        cfg = TrainConfig.from_dict(json.loads((path / "config.json").read_text(encoding="utf-8")))
        resamples = _scale_of(cfg).resamples
        reached = summary.status == "reached_train_acc"
        entry: dict[str, Any] = {"name": name, "axes": _axes_of(name), "status": summary.status,
                                 "steps": summary.step, "reached_stop": reached, "train_seconds": summary.seconds}
        if summary.status != "diverged":
            entry.update(measure_model(path))
        models.append(entry)
        if not reached:
            excluded.append(name)
    ranked = rank_measures([m for m in models if m["reached_stop"]], resamples=resamples)
    text = table(ranked, excluded)
    if dirs:
        atomic_write_bytes(next(iter(dirs.values())).parent / TABLE_FILE, text.encode())
    return {"models": models, "excluded": excluded, "ranking": ranked, "table": text, "axes": list(AXES),
            "sam_vs_sgd": sam_pairs(models)}


def figures(summary: StudySummary) -> DrawnFigures:
    """The study's summary figure (:func:`sharpscope.plots.population.population_figure`) with :func:`caption`."""
    from sharpscope.plots.population import population_figure

    if not (summary.results.get("ranking") or {}).get("measures"):
        return []
    fig, data = population_figure(summary.results)
    return [("tau", fig, data, caption(summary))]


def _count(n: int) -> str:
    """``n`` with its thousands apart: ``3 000``."""
    return f"{n:,}".replace(",", " ")


def caption(summary: StudySummary) -> str:
    """The figure's caption from the study's summary: the ranked models and why the others are left out, the
    grid's varied axes, the seed and the data (the ranked models' run summaries), the intervals and the
    permutation critical |τ| of the ranking, and the scale and devices."""
    sc, results = SCALES[summary.scale], summary.results
    ranking, models = results["ranking"], results["models"]
    ranked = [m for m in models if m["reached_stop"]]
    left_out = [m for m in models if not m["reached_stop"]]
    why = " or ".join(reason for reason, hit in ((f"hit the {_count(sc.max_steps)}-step cap",
                                                  any(m["status"] != "diverged" for m in left_out)),
                                                 ("diverged", any(m["status"] == "diverged" for m in left_out))) if hit)
    excluded = (f"{len(left_out)} of the {len(models)}-model grid {why} and {'is' if len(left_out) == 1 else 'are'} "
                "excluded" if left_out else f"the whole {len(models)}-model grid")
    varied = [AXIS_NAMES[a] for a in results["axes"] if len({m["axes"][a] for m in models}) > 1]
    data = summary.stages[ranked[0]["name"]].data or {}
    name, family = DATASETS[str(data["train"]["name"]).split("-")[0]]
    mde = ranking["mde"]
    devices = sorted({str(m.get("device", "?")) for m in ranked})
    where = ", ".join(d.upper() if d == "cpu" else d for d in devices)
    return (f"Kendall's τ_b of each measure with the generalisation gap (train − test accuracy) and with the test error "
            f"over the {ranking['n']} models that reached {sc.target:.0%} training accuracy ({excluded}); the grid is "
            f"{' × '.join(varied)}, one seed ({SEED}) per configuration, {_count(data['train']['examples'])} {name} "
            f"training images, {_count(data['test']['examples'])} test images. Segments: 95% percentile bootstrap "
            f"intervals over models; grey band: |τ| below the {mde['level']:.0%} permutation critical value "
            f"({mde['critical']:.2f} for {mde['n']} models), where a correlation cannot be told from 0. Right: each "
            "model's gap against the measure with the highest and with the lowest τ with the gap. Not the papers' "
            f"setting: one small {family}, far fewer models than Jiang et al. Scale '{summary.scale}'; measured on "
            f"{where}.")


def prepare(scale: str, _: Path, options: Mapping[str, Any]) -> dict[str, Any]:
    """Before any training: the grid and the smallest |τ| its models can detect (stored under ``data``)."""
    if options:
        raise ConfigError(f"study 'population' takes no options, got {sorted(options)}")
    sc = SCALES[scale]
    n = len(grid(scale))
    return {"models": n, "axes": list(AXES), "stop_at_train_acc": sc.target, "max_steps": sc.max_steps,
            "probe_n": sc.probe_n, "mde_before": rc.tau_mde(n, resamples=sc.resamples)}


def detectable(scale: str) -> list[dict[str, Any]]:
    """P1's smallest detectable |τ| at the grid's size (:func:`~sharpscope.experiments.rank_correlation.tau_mde`),
    in the form of :func:`sharpscope.experiments.detectable.plan`."""
    n = len(grid(scale))
    tau = rc.tau_mde(n, resamples=SCALES[scale].resamples)
    return [{"claim": "P1", "quantity": f"Kendall |τ| over {n} models", "mde": tau["mde"], "note": "",
             "critical": tau["critical"], "power": 0.8, "level": 0.95,
             "assumption": f"permutation null of {n} untied ranks; a |τ| below the critical value "
                           f"{tau['critical']:.3f} is inconclusive"}]


def without_data(scale: str) -> dict[str, str]:
    """The data-root files the population can do without at ``scale``, and what it uses instead."""
    return {} if scale == "smoke" else {CIFAR10_TRAIN: "MNIST-1D and MLPs used"}


STUDY = Study("population", ("P1",), stages, evaluate, prepare=prepare, draw=figures, detectable=detectable,
              without_data=without_data)
