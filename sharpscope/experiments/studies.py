"""Studies: ordered sets of named runs with dependencies, and the claims they check.

A study is run by :func:`run_study` into ``out_dir``: derived data sets (confusion set, label
noise) are written once to ``out_dir/data/*.npz``, each stage trains into ``out_dir/<stage>``
(resumable: a finished stage returns its stored summary), a stage that starts from another one's
weights has ``init_from = out_dir/<that stage>`` (its latest checkpoint), and the study's numbers
(SCIENCE.md 9 criteria, :mod:`sharpscope.experiments.criteria`) go to ``out_dir/<study>-summary.json``.

Studies (``scale`` as for recipes: smoke / cpu / gpu):

* ``eos`` [E1, E2, E3] — full-batch GD on ``eos-gd`` for a sweep of η (each run should settle at
  its own 2/η), Polyak momentum (3.8/η), cross entropy.
* ``sam-edge`` [E5, E6] — full-batch SAM on ``sam-edge`` (MLP, MNIST) for ρ ∈ {0, 0.02, 0.1} (ρ = 0
  is the GD control) and on ``sam-edge-cnn`` for ρ ∈ {0, 0.1}.
* ``escape`` [A1–A4] — Ahn et al. from a bad global minimizer (Liu et al.): ``random-init``
  (clean SGD from the seeded init, the reference test accuracy), ``pretrain`` on the clean set ∪
  its random-label confusion set (``copies`` copies, 10% of the pixels zeroed), ``finetune`` on
  the clean labels with vanilla SGD to 100% train accuracy (the bad minimizer); from it, ``sgd``
  (η = 0.001, no perturbation), ``rs`` and ``sa`` (batch 128, SA's ρ below RS's), ``sa-b1`` and
  ``sa-b64`` (SA's perturbation batch; the loader's batch stays 128; ``sa-b1-small-step``: B = 1
  with η′ = 0.01), with the Hessian trace on a
  fixed training subset and the test accuracy tracked.
* ``label-noise`` [G6] — Damian et al.: label-noise SGD (p = 0.2) from the bad minimizer of
  ``escape`` (its ``pretrain`` and ``finetune`` stages, shared when run in the same folder). The
  fresh noise of every step is approximated by ``noise_copies`` pre-drawn noisy copies of the
  training set that mini-batches are drawn from; the trace is measured on the first copy's
  inputs (the cross-entropy Hessian does not depend on the labels), so its ``train_acc`` is
  against noisy labels.
* ``sam-flatness`` [G3, G5] — mini-batch SGD, SAM and Sparse SAM (50%, SSAM-D mask) on the
  BatchNorm-free ``sam-flatness`` MLP; λ_max and λ_max/λ_5 at the end, test accuracy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sharpscope.data import confusion_set, label_noise, mnist1d, mnist_npz
from sharpscope.errors import ConfigError
from sharpscope.experiments import criteria
from sharpscope.experiments.recipes import (
    check_scale,
    eos_ce,
    eos_cifar5k,
    eos_gd,
    eos_momentum,
    fc,
    sam_edge,
    sam_edge_cnn,
    sam_flatness,
    shared_data_file,
)
from sharpscope.io.atomic import atomic_write, atomic_write_bytes
from sharpscope.track import RunDirectory, TrainConfig, jsonsafe, train

Progress = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class Stage:
    """One run of a study: ``build(scale, study_dir)`` gives its config; ``init_from`` names a stage."""

    name: str
    build: Callable[[str, Path], TrainConfig]
    init_from: str | None = None


@dataclass(frozen=True)
class Figure:
    """A figure of a study: ``kind`` (``sharpness``, ``escape``, ``trace-accuracy``) over the finished
    stages matching the ``fnmatch`` patterns ``stages`` (in that order), saved as ``<study>-<stem>``;
    ``k`` eigenvalues per run in ``sharpness`` figures."""

    stem: str
    kind: str
    stages: tuple[str, ...]
    caption: str
    k: int = 1


@dataclass(frozen=True)
class Study:
    name: str
    checks: tuple[str, ...]
    stages: Callable[[str], list[Stage]]
    evaluate: Callable[[Mapping[str, Path]], dict[str, Any]]
    prepare: Callable[[str, Path], dict[str, Any]] | None = None
    figures: tuple[Figure, ...] = field(default=())


def _stage(name: str, cfg: Callable[[str], TrainConfig], overrides: Mapping[str, Any] | None = None,
           **scaled: Mapping[str, Any]) -> Stage:
    """A stage from a recipe function with ``overrides`` (all scales) and per-scale ``scaled[scale]``."""

    def build(scale: str, _: Path) -> TrainConfig:
        out = cfg(scale)
        both = {**(overrides or {}), **scaled.get(scale, {})}
        return out.with_overrides(both) if both else out

    return Stage(name, build)


# ------------------------------------------------------------------------------ eos
def _eos_stages(scale: str) -> list[Stage]:
    smoke = {"smoke": {"steps": 6, "measure_every": 3}}
    sweep = {"smoke": (0.01,), "cpu": (0.2, 0.15, 0.1), "gpu": (2 / 50, 2 / 100, 2 / 200)}[scale]
    stages = []
    for lr in sweep:
        extra = {"steps": 2500} if (scale == "cpu" and lr == 0.1) else {}  # 2/η = 20 is reached late
        stages.append(_stage(f"gd-lr{lr:.4g}", eos_gd, {"optimizer_kwargs.lr": lr, **extra}, **smoke))
    stages += [_stage("momentum", eos_momentum, **smoke),
               _stage("ce", eos_ce, smoke={"steps": 6, "measure_every": 3}, cpu={"steps": 2000})]
    if shared_data_file("cifar10_train16k.npz") is not None and scale != "gpu":  # E1 on the paper's data
        stages += [_stage("cifar5k-lr0.02", eos_cifar5k),
                   _stage("cifar5k-lr0.01", eos_cifar5k, {"optimizer_kwargs.lr": 0.01},
                          cpu={"steps": 6000})]
    return stages


def _eos_evaluate(dirs: Mapping[str, Path]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, path in dirs.items():
        rec = criteria.measurements(path)
        stats = criteria.edge_stats(rec)
        if name == "momentum":  # E2: the band; the plateau must not be GD's
            gd = criteria.column(rec, "thresholds.gd_edge")[0]
            stats["median_lambda_over_gd_edge"] = stats.get("median_lambda", math.nan) / gd
            stats["holds"] = bool(stats.get("sharpens") and 0.9 <= stats.get("median", 0) <= 1.25
                                  and stats.get("longest_above_1_3", 9) < 2 and stats["median_lambda_over_gd_edge"] >= 1.5)
        out[name] = stats
    gd = [v for k, v in out.items() if k.startswith("gd-")]
    out["E1"] = {"holds_for": [k for k, v in out.items() if k.startswith("gd-") and v.get("holds")],
                 "runs": len(gd)}
    return out


# ------------------------------------------------------------------------------ sam-edge
def _sam_stages(scale: str) -> list[Stage]:
    smoke = {"smoke": {"steps": 4}}
    rhos = (0.0, 0.02, 0.1) if scale != "smoke" else (0.0, 0.1)
    mlp = [_stage(f"mlp-rho{r:g}", sam_edge, {"optimizer_kwargs.rho": r}, **smoke) for r in rhos]
    cnn = [_stage(f"cnn-rho{r:g}", sam_edge_cnn, {"optimizer_kwargs.rho": r}, **smoke) for r in (0.0, 0.1)]
    return mlp + cnn


def _sam_evaluate(dirs: Mapping[str, Path]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, path in dirs.items():
        rec = criteria.measurements(path)
        out[name] = criteria.edge_stats(rec) if name.endswith("rho0") else criteria.sam_edge_stats(rec)
    return out


# ------------------------------------------------------------------------------ escape / label noise
_ESCAPE = {  # scale -> (clean examples, confusion copies, noisy copies, widths, steps after the minimizer)
    "smoke": (32, 2, 2, [16], 4),
    "cpu": (1000, 4, 10, [256, 256], 3000),
    "gpu": (4000, 10, 10, [1024, 1024], 20000),
}


def _raw_images(n: int, test_n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, str]:
    """Train and test inputs in [0, 1] (MNIST from ``mnist5k.npz``, classes interleaved: the first ``n``
    images train, the last ``test_n`` test), else MNIST-1D (its own test split, unscaled)."""
    path = shared_data_file("mnist5k.npz")
    if path is not None:
        ds = mnist_npz(path, center=None, flatten=False, order="interleave")  # class-balanced prefixes
        if n + test_n > len(ds):
            raise ConfigError(f"mnist5k.npz has {len(ds)} images; the study needs {n} + {test_n}")
        x = ds.x[:, 0]
        return x[:n], ds.y[:n], x[-test_n:], ds.y[-test_n:], f"mnist:{path}"
    train, test = mnist1d(n=n), mnist1d(n=test_n, train=False)
    return train.x, train.y, test.x, test.y, "mnist1d"


def _save_npz(path: Path, **arrays: torch.Tensor) -> None:
    data = {k: v.numpy() for k, v in arrays.items()}
    atomic_write(path, lambda f: np.savez(f, **data))


def _escape_prepare(scale: str, out_dir: Path) -> dict[str, Any]:
    """Write ``data/clean.npz``, ``data/pretrain.npz`` (clean ∪ confusion set) and ``data/noisy.npz``."""
    n, copies, noise_copies, _, _ = _ESCAPE[scale]
    folder = out_dir / "data"
    info_path = folder / "info.json"
    if info_path.is_file():
        return jsonsafe.loads(info_path.read_text())
    x, y, xt, yt, source = _raw_images(n, 1000 if scale != "smoke" else 200)
    g = torch.Generator().manual_seed(0)
    confusion = confusion_set(x, 10, copies=copies, zero_frac=0.1, mode="pixel", generator=g)
    noisy = torch.cat([label_noise(y, 0.2, 10, g)[0] for _ in range(noise_copies)])
    mean = float(x.mean())
    flat = (lambda t: (t - mean).reshape(len(t), -1)) if x.dim() == 3 else (lambda t: t - mean)
    test = {"x_test": flat(xt), "y_test": yt}
    _save_npz(folder / "clean.npz", x=flat(x), y=y, **test)
    _save_npz(folder / "pretrain.npz", x=torch.cat([flat(x), flat(confusion.x)]), y=torch.cat([y, confusion.y]),
              **test)
    _save_npz(folder / "noisy.npz", x=flat(x).repeat(noise_copies, 1), y=noisy, **test)
    info = {"source": source, "clean_examples": n, "test_examples": len(yt), "confusion": confusion.meta,
            "noise": {"p": 0.2, "copies": noise_copies, "flipped": float((noisy != y.repeat(noise_copies)).float()
                                                                          .mean())},
            "centering": {"subtract": mean, "of": "the clean training inputs"}, "features": int(flat(x).shape[1]),
            "seed": 0}
    atomic_write_bytes(info_path, (jsonsafe.dumps(info, indent=2) + "\n").encode())
    return info


def _escape_base(scale: str, out_dir: Path, data: str, *, lr: float, steps: int, every: int) -> TrainConfig:
    n, _, _, widths, _ = _ESCAPE[scale]
    features = jsonsafe.loads((out_dir / "data" / "info.json").read_text())["features"]
    path = (out_dir / "data" / f"{data}.npz").resolve()
    return TrainConfig(model=fc(features, widths, "relu"), data=f"npz:{path}", test_data=f"npz:{path}", loss="ce",
                       optimizer="sgd", optimizer_kwargs={"lr": lr}, batch_size=min(128, n), probe_n=min(n, 500),
                       physical_batch_size=1000, steps=steps, measure_every=every, k=1, trace=True,
                       trace_method="hutch++", trace_matvecs=30 if scale != "smoke" else 6, checkpoint_every=every,
                       max_iter=10 if scale == "smoke" else None,
                       device="auto" if scale == "gpu" else "cpu")


def _fit(data: str) -> Callable[[str, Path], TrainConfig]:
    """SGD (lr 0.1, no momentum / wd / augmentation, batch 128) until 100% (clean) or 99% (confusion)."""

    def build(scale: str, out_dir: Path) -> TrainConfig:
        steps = {"smoke": 4, "cpu": 30000, "gpu": 200000}[scale]
        every = {"smoke": 2, "cpu": 250, "gpu": 1000}[scale]
        cfg = _escape_base(scale, out_dir, data, lr=0.1, steps=steps, every=every)
        cfg.stop_at_train_acc = 1.0 if data == "clean" else 0.99
        if data == "pretrain":
            cfg.probe_n = None  # the stopping rule reads the probe set's accuracy: all of it
            cfg.trace = False
        return cfg

    return build


def _after_minimizer(optimizer: str, *, rho: float = 0.0, sa_batch: int = 128, lr: float = 0.001,
                     lr_perturb: float = 0.1, data: str = "clean") -> Callable[[str, Path], TrainConfig]:
    """From the bad minimizer: SGD / RS / SA at η = ``lr``, perturbation step η′ = ``lr_perturb`` at every step."""

    def build(scale: str, out_dir: Path) -> TrainConfig:
        steps = _ESCAPE[scale][4]
        cfg = _escape_base(scale, out_dir, data, lr=lr, steps=steps, every=max(1, steps // 15))
        cfg.optimizer = optimizer
        if optimizer in ("rs", "sa"):
            cfg.optimizer_kwargs.update(rho=rho, lr_perturb=lr_perturb, eps0=0.0, tolerance_branch=False)
            if optimizer == "sa":
                cfg.optimizer_kwargs["batch_size"] = min(sa_batch, _ESCAPE[scale][0])
        return cfg

    return build


def _escape_stages(scale: str) -> list[Stage]:
    return [
        Stage("random-init", _fit("clean")),
        Stage("pretrain", _fit("pretrain")),
        Stage("finetune", _fit("clean"), init_from="pretrain"),
        Stage("sgd", _after_minimizer("sgd"), init_from="finetune"),
        Stage("rs", _after_minimizer("rs", rho=0.1), init_from="finetune"),
        Stage("sa", _after_minimizer("sa", rho=0.05), init_from="finetune"),
        Stage("sa-b64", _after_minimizer("sa", rho=0.05, sa_batch=64), init_from="finetune"),
        Stage("sa-b1", _after_minimizer("sa", rho=0.05, sa_batch=1), init_from="finetune"),
        # B = 1 diverges at η′ = 0.1 (cpu, step 15): the same with a 10× smaller perturbation step
        Stage("sa-b1-small-step", _after_minimizer("sa", rho=0.05, sa_batch=1, lr_perturb=0.01), init_from="finetune"),
    ]


def _label_noise_stages(scale: str) -> list[Stage]:
    return [*_escape_stages(scale)[1:3],
            Stage("label-noise", _after_minimizer("sgd", lr=0.1, data="noisy"), init_from="finetune")]


def _final_test(path: Path) -> float:
    rec = criteria.measurements(path)
    return criteria.final_record(rec).get("test_acc", math.nan)


def _escape_evaluate(dirs: Mapping[str, Path]) -> dict[str, Any]:
    out: dict[str, Any] = {name: criteria.trace_accuracy(criteria.measurements(p)) for name, p in dirs.items()}
    for name, path in dirs.items():
        out[name]["status"] = (RunDirectory(path).read_summary() or {}).get("status")
    for name in ("random-init", "pretrain", "finetune"):
        if name in dirs:
            out[name]["final"] = criteria.final_record(criteria.measurements(dirs[name]))
    if "random-init" in dirs and "finetune" in dirs:
        gap = _final_test(dirs["random-init"]) - _final_test(dirs["finetune"])
        out["A1"] = {"test_acc_gap_points": 100 * gap, "holds": bool(gap >= 0.2)}
    if "sgd" in out and out["sgd"].get("checkpoints"):
        delta = out["sgd"]["test_acc"][1] - out["sgd"]["test_acc"][0]
        out["A2"] = {"delta_test_acc_points": 100 * delta, "holds": bool(abs(delta) < 0.02)}
    if "rs" in out and "sa" in out and out["rs"].get("checkpoints") and out["sa"].get("checkpoints"):
        tr_sa, tr_rs = out["sa"]["trace"][1], out["rs"]["trace"][1]
        acc_sa, acc_rs = out["sa"]["test_acc"][1], out["rs"]["test_acc"][1]
        out["A3"] = {"trace_sa_rs": [tr_sa, tr_rs], "test_acc_sa_rs": [acc_sa, acc_rs], "seeds": 1,
                     "holds": bool(tr_sa < tr_rs and acc_sa > acc_rs)}
    if all(k in out and out[k].get("checkpoints") for k in ("sa-b1", "sa-b64", "sa")):
        tr = [out[k]["trace"][1] for k in ("sa-b1", "sa-b64", "sa")]
        diverged = [k for k in ("sa-b1", "sa-b64", "sa") if out[k]["status"] == "diverged"]
        out["A4"] = {"trace_b1_b64_b128": tr, "diverged": diverged,
                     "holds": bool(not diverged and tr[0] < tr[1] <= tr[2])}
    if "label-noise" in out and out["label-noise"].get("checkpoints"):
        rho = out["label-noise"]["spearman_trace_test_acc"]
        out["G6"] = {"spearman_trace_test_acc": rho, "holds": bool(rho <= -0.7)}
    return out


# ------------------------------------------------------------------------------ sam-flatness
def _flat_stages(scale: str) -> list[Stage]:
    return [_stage(opt, lambda s, o=opt: sam_flatness(s, optimizer=o), smoke={"steps": 4, "measure_every": 4})
            for opt in ("sgd", "sam", "sparse-sam")]


def _flat_evaluate(dirs: Mapping[str, Path]) -> dict[str, Any]:
    out: dict[str, Any] = {name: criteria.final_record(criteria.measurements(p)) for name, p in dirs.items()}
    if "sgd" in out and "sam" in out:
        lam_sgd, lam_sam = out["sgd"]["eigenvalues"][0], out["sam"]["eigenvalues"][0]
        out["G3"] = {"lambda_max_sgd_over_sam": lam_sgd / lam_sam, "holds": bool(lam_sgd / lam_sam >= 5)}
    if "sam" in out and "sparse-sam" in out:
        diff = out["sparse-sam"].get("test_acc", math.nan) - out["sam"].get("test_acc", math.nan)
        out["G5"] = {"test_acc_sparse_minus_sam_points": 100 * diff, "holds": bool(diff >= -0.003)}
    return out


STUDIES: dict[str, Study] = {
    "eos": Study("eos", ("E1", "E2", "E3"), _eos_stages, _eos_evaluate, figures=(
        Figure("gd-sweep", "sharpness", ("gd-lr*",),
               "Full-batch GD on the tanh MLP (MSE): λ_max against step for a sweep of step sizes, with 2/η."),
        Figure("momentum-ce", "sharpness", ("momentum", "ce"),
               "Polyak momentum β = 0.9 (edge 3.8/η) and cross entropy (edge 2/η), full batch."))),
    "sam-edge": Study("sam-edge", ("E5", "E6"), _sam_stages, _sam_evaluate, figures=(
        Figure("mlp", "sharpness", ("mlp-rho*",),
               "Full-batch SAM on a ReLU MLP (mse-mean): λ_max against the SAM-edge (moves with ‖g‖); ρ = 0 is GD."),
        Figure("cnn", "sharpness", ("cnn-rho*",),
               "Full-batch SAM on the conv-ReLU-LayerNorm-maxpool CNN: λ_max against the SAM-edge."))),
    "escape": Study("escape", ("A1", "A2", "A3", "A4"), _escape_stages, _escape_evaluate, _escape_prepare, figures=(
        Figure("rs-sa", "escape", ("sgd", "rs", "sa"),
               "From the bad minimizer: SGD (η = 0.001) vs RS (ρ = 0.1) vs SA (ρ = 0.05), batch 128."),
        Figure("sa-batch", "escape", ("sa-b1", "sa-b1-small-step", "sa-b64", "sa"),
               "SA with perturbation batch B = 1, 64, 128 from the bad minimizer (η′ = 0.1; "
               "sa-b1-small-step: B = 1 with η′ = 0.01)."))),
    "label-noise": Study("label-noise", ("G6",), _label_noise_stages, _escape_evaluate, _escape_prepare, figures=(
        Figure("trace-accuracy", "trace-accuracy", ("label-noise",),
               "Label-noise SGD (p = 0.2) from the bad minimizer: tr(H) and test accuracy."),)),
    "sam-flatness": Study("sam-flatness", ("G3", "G5"), _flat_stages, _flat_evaluate, figures=(
        Figure("spectrum", "sharpness", ("sgd", "sam", "sparse-sam"),
               "SGD vs SAM vs Sparse SAM (SSAM-D, 50%): λ_max along mini-batch training (λ_1..λ_5 at the end "
               "are in the study summary)."),)),
}


def finished_summary(run_dir: Path, cfg: TrainConfig) -> dict[str, Any] | None:
    """The stored summary of a finished run of ``cfg``, also when the run predates config fields
    added since (absent from its ``config.json`` and at their defaults in ``cfg``) or was made by
    another study sharing the stage (``recipe`` differs); else None."""
    run = RunDirectory(run_dir)
    if not run.config_path.is_file() or not run.summary_path.is_file():
        return None
    stored, new, defaults = run.read_config(), cfg.to_dict(), TrainConfig.defaults()
    if any(stored.get(k, defaults.get(k)) != jsonsafe.loads(jsonsafe.dumps(v)) for k, v in new.items()
           if k != "recipe"):
        return None
    summary = run.read_summary()
    return None if summary is None else {**summary, "already_complete": True}


def summary_path(name: str, out_dir: str | Path) -> Path:
    """Where :func:`run_study` writes study ``name``'s numbers: ``<out_dir>/<name>-summary.json`` (studies
    that share stages, like ``escape`` and ``label-noise``, can share a folder)."""
    return Path(out_dir) / f"{name}-summary.json"


def study_stages(name: str, scale: str) -> list[Stage]:
    """The stages of study ``name`` at ``scale`` (unknown names raise :class:`ConfigError`)."""
    if name not in STUDIES:
        raise ConfigError(f"unknown study {name!r}; valid: {', '.join(STUDIES)}")
    check_scale(scale)
    return STUDIES[name].stages(scale)


def run_study(name: str, scale: str, out_dir: str | Path, *, only: list[str] | None = None,
              progress: Progress | None = None) -> dict[str, Any]:
    """Run (or resume) study ``name`` into ``out_dir`` and write :func:`summary_path`.

    ``only`` restricts to these stages (the stages they start from are run too).
    ``progress(stage, summary)`` is called after each stage. Returns the study summary:
    ``{"study", "scale", "checks", "data", "stages": {name: run summary}, "results": criteria}``.
    """
    stages = study_stages(name, scale)
    study = STUDIES[name]
    out = Path(out_dir)
    by_name = {s.name: s for s in stages}
    wanted = list(by_name) if only is None else list(only)
    unknown = [s for s in wanted if s not in by_name]
    if unknown:
        raise ConfigError(f"study {name!r} has no stage(s) {unknown}; valid: {', '.join(by_name)}")
    order: list[str] = []

    def add(stage: str) -> None:
        parent = by_name[stage].init_from
        if parent is not None:
            add(parent)
        if stage not in order:
            order.append(stage)

    for stage in wanted:
        add(stage)
    data = study.prepare(scale, out) if study.prepare is not None else None
    summaries: dict[str, Any] = {}
    for stage_name in sorted(order, key=list(by_name).index):
        stage = by_name[stage_name]
        cfg = stage.build(scale, out)
        cfg.recipe, cfg.scale = f"{name}/{stage.name}", scale
        if stage.init_from is not None:
            cfg.init_from = str((out / stage.init_from).resolve())
        summaries[stage.name] = finished_summary(out / stage.name, cfg) or train(cfg, out / stage.name)
        if progress is not None:
            progress(stage.name, summaries[stage.name])
    results = study.evaluate({s: out / s for s in summaries})
    summary = {"study": name, "scale": scale, "checks": list(study.checks), "data": data, "stages": summaries,
               "results": results}
    atomic_write_bytes(summary_path(name, out), (jsonsafe.dumps(summary, indent=2) + "\n").encode())
    return jsonsafe.loads(jsonsafe.dumps(summary))
