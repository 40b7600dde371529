"""Escaping a bad global minimizer (Ahn et al. 2024) and label-noise SGD (Damian et al. 2021), with controls.

The bad minimizer (Liu et al. 2020), built as Liu et al. and Damian et al. build it: pre-train on the
random-label "confusion" set alone (``copies`` copies of the clean images, 10% of the pixel positions
zeroed in each copy, uniform random labels) to ``pretrain_acc`` train accuracy, then fine-tune on the
clean labels with vanilla SGD (lr 0.1, batch 128, no momentum, weight decay or augmentation) to 100%.
The option ``construction="clean+confusion"`` pre-trains on the clean set ∪ the confusion set instead.
``random-init-s*`` fit the clean set from seeded initialisations: the reference test accuracy (A1).

From the bad minimizer, at η = 0.001 (batch 128) and for every seed in ``seeds`` (seeds vary the batch
order, the perturbation draws and the trace probes; the minimizer is shared):

* A2 ``sgd-s*``: SGD at η (must not escape).
* A3 sweep (seed 0, ``sweep_steps``): RS, SA on the descent batch (``same``) and SA on an independent
  batch (``ind``) for ρ ∈ ``rhos`` and η′ ∈ ``lr_perturbs``, and the independent-batch SA's ρ = 0 twin
  for each η′ (RS's and same-batch SA's ρ = 0 twins are SGD at η: their v = Proj⊥ ∇f(x) = 0).
* A3 full length (``steps``, all seeds): the sweep's best RS and best SA (the lowest tr(H) at the end,
  preferring runs that kept ≥ 99% train accuracy), the best SA's ρ = 0 twin, and SGD at η′ (the
  reviewer's explanation: the extra step is SGD at a larger step size).
* A4 (``sweep_steps``, the seeds ``a4_seeds``: one at the cpu scale, for time): independent-batch SA at the best SA's ρ and η′ with perturbation
  batch B ∈ ``sa_batches`` and the ``rho+lr`` batch scaling (ρ and η′ times √(B/128)), each with its
  ρ = 0 twin.
* G6 (the ``label-noise`` study): label-noise SGD (p = 0.2, fresh noise at every step) at ``noise_lr``
  and its control, the same SGD without noise.

Scales: ``cpu`` uses the first 1 000 CIFAR-10 training images, 2 000 test images and a GroupNorm CNN
(32-64-128 channels); ``gpu`` is Ahn et al.'s setting except for the data: a GroupNorm ResNet-18 (width
64) on the 16 000 training images of ``cifar10_train16k.npz`` (the paper uses all 50 000). Without the
CIFAR-10 files under the data root both fall back to MNIST-1D and a ReLU MLP (stated, and recorded as the
data source).

Every run measures tr(H) (Hutch++ on the first ``probe_n`` clean training images with the same probe
vectors in every run from the minimizer, so arms differ by their weights and not by their probes; the
loss and accuracy on those images too) and the test accuracy on ``test_n`` held-out images, ``measurements`` times.
The criteria (:mod:`sharpscope.experiments.arms`) compare arms at the last step and at
common training-loss levels, over seeds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from sharpscope.curvature.settings import RUN_DEFAULTS
from sharpscope.data import confusion_set, mnist1d, resolve_data
from sharpscope.data.root import CIFAR10_TEST, CIFAR10_TRAIN, data_file
from sharpscope.errors import ConfigError
from sharpscope.experiments import arms as arm_criteria
from sharpscope.experiments.detectable import Assumption, plan
from sharpscope.experiments.recipes import fc
from sharpscope.experiments.studies.framework import Figure, Stage, Study
from sharpscope.io import jsonsafe
from sharpscope.io.atomic import atomic_write, atomic_write_bytes
from sharpscope.track import RunDirectory, TrainConfig

CONSTRUCTIONS = ("confusion", "clean+confusion")
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


@dataclass(frozen=True)
class EscapeScale:
    """The sizes of one scale of the escape and label-noise studies."""

    n: int  # clean training images
    test_n: int
    copies: int  # confusion copies of each clean image
    channels: tuple[int, ...]  # the GroupNorm CNN (an MLP of these widths when CIFAR-10 is absent)
    pretrain_acc: float
    fit_steps: int  # step cap of the fitting stages
    fit_every: int
    steps: int  # full-length runs from the minimizer
    sweep_steps: int
    measurements: int
    probe_n: int
    trace_matvecs: int
    seeds: tuple[int, ...]
    rhos: tuple[float, ...]
    lr_perturb_factors: tuple[float, ...]  # η′ / η
    sa_batches: tuple[int, ...]
    noise_lr: float
    noise_steps: int
    a4_seeds: tuple[int, ...]  # the perturbation-batch runs
    a5_draws: int  # the smoothing identity at the bad minimizer: antithetic pairs, Hutchinson probes, examples
    a5_probes: int
    a5_examples: int


ETA = 0.001  # Ahn et al.'s step size from the bad minimizer
SCALES: dict[str, EscapeScale] = {
    "smoke": EscapeScale(n=32, test_n=32, copies=2, channels=(4, 8), pretrain_acc=0.5, fit_steps=4, fit_every=2,
                         steps=4, sweep_steps=2, measurements=2, probe_n=32, trace_matvecs=6, seeds=(0, 1),
                         rhos=(0.05,), lr_perturb_factors=(10.0,), sa_batches=(1,), noise_lr=0.05, noise_steps=4,
                         a4_seeds=(0,), a5_draws=16, a5_probes=2, a5_examples=16),
    "cpu": EscapeScale(n=1000, test_n=2000, copies=10, channels=(32, 64, 128), pretrain_acc=0.9999, fit_steps=20000,
                       fit_every=400, steps=1000, sweep_steps=200, measurements=5, probe_n=256, trace_matvecs=20,
                       seeds=(0, 1, 2), rhos=(0.01, 0.05, 0.1, 0.5), lr_perturb_factors=(1.0, 10.0),
                       sa_batches=(1, 64, 128), noise_lr=0.1, noise_steps=1000, a4_seeds=(0,), a5_draws=256,
                       a5_probes=32, a5_examples=256),
    "gpu": EscapeScale(n=16000, test_n=2000, copies=10, channels=(64,), pretrain_acc=0.9999,
                       fit_steps=400000, fit_every=1000, steps=20000, sweep_steps=4000, measurements=20, probe_n=5000,
                       trace_matvecs=99, seeds=(0, 1, 2), rhos=(0.01, 0.05, 0.1, 0.5), lr_perturb_factors=(1.0, 10.0),
                       sa_batches=(1, 64, 128), noise_lr=0.1, noise_steps=20000, a4_seeds=(0, 1, 2), a5_draws=256,
                       a5_probes=64,
                       a5_examples=1000),
}


# ------------------------------------------------------------------------------ data
def _images(n: int, test_n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, str]:
    """Raw train and test inputs in [0, 1]: the first ``n`` CIFAR-10 training images (NCHW) and ``test_n``
    test images from the data root; else MNIST-1D vectors (unscaled) with its own test split."""
    train, test = data_file(CIFAR10_TRAIN), data_file(CIFAR10_TEST)
    if train is not None and test is not None:
        tr = resolve_data(f"cifar10:{train}", n=n, train=True, standardize=None, flatten=False)
        te = resolve_data(f"cifar10:{test}", n=test_n, train=False, standardize=None, flatten=False)
        return tr.x, tr.y, te.x, te.y, f"cifar10:{train.name}+{test.name}"
    tr_1d, te_1d = mnist1d(n=n), mnist1d(n=test_n, train=False)
    return tr_1d.x, tr_1d.y, te_1d.x, te_1d.y, "mnist1d"


def _save_npz(path: Path, **arrays: torch.Tensor) -> None:
    data = {k: v.numpy() for k, v in arrays.items()}
    atomic_write(path, lambda f: np.savez(f, **data))  # type: ignore[arg-type]  # numpy's stub: **data vs allow_pickle


class DataSizes(Protocol):
    """What the data preparation reads of a scale."""

    @property
    def n(self) -> int:
        """Clean training images."""
    @property
    def test_n(self) -> int:
        """Test images."""
    @property
    def copies(self) -> int:
        """Confusion copies of each clean image."""


def prepare(scale: str, out_dir: Path, options: Mapping[str, Any], *, pretrain: bool = True) -> dict[str, Any]:
    """:func:`prepare_data` with the sizes of ``scale``."""
    return prepare_data(SCALES[scale], out_dir, options, pretrain=pretrain)


def prepare_data(sc: DataSizes, out_dir: Path, options: Mapping[str, Any], *, pretrain: bool = True,
                 pool: int = 1) -> dict[str, Any]:
    """Write ``data/clean.npz`` (train and test) and ``data/pretrain.npz`` (the confusion set, or
    clean ∪ confusion with ``construction="clean+confusion"``) once; return what was made. ``pretrain=False``:
    the clean set only (construction ``"none"``, no options). ``pool > 1`` averages the images over
    ``pool × pool`` pixel blocks first (a 32×32 CIFAR-10 image becomes 16×16 with 2)."""
    if options and not pretrain:
        raise ConfigError(f"the study takes no options, got {sorted(options)}")
    unknown = sorted(set(options) - {"construction"})
    if unknown:
        raise ConfigError(f"unknown escape study option(s) {unknown}; valid: construction")
    construction = options.get("construction", "confusion") if pretrain else "none"
    if pretrain and construction not in CONSTRUCTIONS:
        raise ConfigError(f"construction must be one of {', '.join(CONSTRUCTIONS)}; got {construction!r}")
    folder = out_dir / "data"
    info_path = folder / "info.json"
    if info_path.is_file():
        info = jsonsafe.loads(info_path.read_text())
        if info.get("construction", "clean+confusion") != construction:
            raise ConfigError(f"{out_dir} was prepared with construction {info.get('construction')!r}; "
                              f"use another folder for {construction!r}")
        return info
    x, y, xt, yt, source = _images(sc.n, sc.test_n)
    if pool > 1 and x.dim() == 4:
        x, xt = torch.nn.functional.avg_pool2d(x, pool), torch.nn.functional.avg_pool2d(xt, pool)
    g = torch.Generator().manual_seed(0)
    confusion = confusion_set(x, 10, copies=sc.copies, zero_frac=0.1, mode="pixel", generator=g) if pretrain else None
    if x.dim() == 4:  # black pixels zeroed in [0, 1], then the CIFAR-10 per-channel standardisation
        mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
        norm: dict[str, Any] = {"mean": list(CIFAR_MEAN), "std": list(CIFAR_STD)}
    else:
        mean, std = x.mean(), torch.ones(())
        norm = {"subtract": float(mean)}
    scale_x = lambda t: ((t - mean) / std).float()  # noqa: E731
    test = {"x_test": scale_x(xt), "y_test": yt}
    _save_npz(folder / "clean.npz", x=scale_x(x), y=y, **test)
    info = {"source": source, "clean_examples": len(y), "test_examples": len(yt), "construction": construction,
            "normalisation": norm, "input_shape": list(x.shape[1:]), "seed": 0, **({"pool": pool} if pool > 1 else {})}
    if confusion is not None:
        px, py = scale_x(confusion.x), confusion.y
        if construction == "clean+confusion":
            px, py = torch.cat([scale_x(x), px]), torch.cat([y, py])
        _save_npz(folder / "pretrain.npz", x=px, y=py, **test)
        info.update(pretrain_examples=len(py), confusion=confusion.meta)
    atomic_write_bytes(info_path, (jsonsafe.dumps(info, indent=2) + "\n").encode())
    return info


def data_info(out_dir: Path) -> dict[str, Any]:
    """What :func:`prepare_data` recorded in ``<out_dir>/data/info.json``."""
    return jsonsafe.loads((out_dir / "data" / "info.json").read_text())


def network(scale: str, info: Mapping[str, Any]) -> dict[str, Any]:
    """The model spec: a GroupNorm ResNet-18 (width ``channels[0]``) at the gpu scale and a GroupNorm CNN
    (conv-ReLU-GN-maxpool blocks) below it on images, else a ReLU MLP."""
    channels = list(SCALES[scale].channels)
    shape = info["input_shape"]
    if len(shape) == 3 and scale == "gpu":
        return {"name": "resnet18", "kwargs": {"num_classes": 10, "norm": "gn", "width": channels[0],
                                               "in_channels": shape[0]}}
    return small_network(channels, info)


def small_network(channels: list[int], info: Mapping[str, Any]) -> dict[str, Any]:
    """A GroupNorm CNN (conv-ReLU-GN-maxpool blocks of ``channels``) on images, else a ReLU MLP of widths
    ``4 × channels``."""
    shape = info["input_shape"]
    if len(shape) == 3:
        return {"name": "cnn", "kwargs": {"in_channels": shape[0], "num_classes": 10, "channels": channels,
                                          "norm": "gn", "image_size": shape[1]}}
    return fc(int(np.prod(shape)), [4 * c for c in channels], "relu")


# ------------------------------------------------------------------------------ configs
Network = Callable[[str, Mapping[str, Any]], dict[str, Any]]


def base_config(scale: str, out_dir: Path, data: str, *, lr: float, steps: int, every: int,
                seed: int = 0, model: Network = network) -> TrainConfig:
    """SGD at ``lr`` (batch 128, no momentum or weight decay) on ``data/<data>.npz``, tr(H) by Hutch++ on the
    first ``probe_n`` images, test accuracy on the held-out images; ``model(scale, data info)`` the spec."""
    sc = SCALES[scale]
    path = (out_dir / "data" / f"{data}.npz").resolve()
    return TrainConfig(model=model(scale, data_info(out_dir)), data=f"npz:{path}",
                       test_data=f"npz:{(out_dir / 'data' / 'clean.npz').resolve()}", loss="ce", optimizer="sgd",
                       optimizer_kwargs={"lr": lr}, batch_size=min(128, sc.n), probe_n=min(sc.n, sc.probe_n),
                       physical_batch_size=500, steps=steps, measure_every=every, trace=True, checkpoint_every=every,
                       seed=seed, device="auto" if scale == "gpu" else "cpu",
                       curvature=RUN_DEFAULTS.replace(k=1, trace_method="hutch++", trace_matvecs=sc.trace_matvecs,
                                                      max_iter=8))


def fit(data: str, seed: int = 0, model: Network = network):  # noqa: ANN201 - a Stage builder
    """SGD (lr 0.1, batch 128) on ``data`` until its goal: 100% on the clean set, ``pretrain_acc`` on the
    pre-training set (its accuracy read on all of it at every measurement)."""

    def build(scale: str, out_dir: Path) -> TrainConfig:
        sc = SCALES[scale]
        cfg = base_config(scale, out_dir, data, lr=0.1, steps=sc.fit_steps, every=sc.fit_every, seed=seed,
                          model=model)
        cfg.stop_at_train_acc = 1.0 if data == "clean" else sc.pretrain_acc
        if data == "pretrain":  # the stopping rule reads the probe set's accuracy: all of it; no trace
            cfg.probe_n, cfg.trace, cfg.curvature = None, False, cfg.curvature.replace(k=1, max_iter=2)
            cfg.test_data, cfg.measure_every = None, 2 * sc.fit_every
        return cfg

    return build


def _every(steps: int, measurements: int) -> int:
    return max(1, steps // measurements)


def after_minimizer(optimizer: str = "sgd", *, seed: int = 0, rho: float = 0.0, lr: float = ETA,
                    lr_perturb: float | None = None, variant: str = "same", batch: int | None = None,
                    length: str = "steps", label_noise: float | None = None):  # noqa: ANN201
    """A stage builder from the bad minimizer: ``optimizer`` ``sgd`` / ``rs`` / ``sa`` at η = ``lr`` with
    perturbation step η′ = ``lr_perturb`` at every step (no tolerance branch); ``variant`` ``same`` or
    ``ind`` (independent batch of ``batch`` examples, ``rho+lr`` scaling when ``batch`` is given);
    ``length`` ``steps``, ``sweep_steps`` or ``noise_steps``."""

    def build(scale: str, out_dir: Path) -> TrainConfig:
        sc = SCALES[scale]
        steps = getattr(sc, length)
        cfg = base_config(scale, out_dir, "clean", lr=lr, steps=steps, every=_every(steps, sc.measurements),
                          seed=seed)
        cfg.label_noise = label_noise
        cfg.probe_seed = 0  # common random numbers: every arm and seed estimates tr(H) with the same probes
        if optimizer in ("rs", "sa"):
            cfg.optimizer = optimizer
            cfg.optimizer_kwargs.update(rho=rho, lr_perturb=lr if lr_perturb is None else lr_perturb, eps0=0.0,
                                        tolerance_branch=False)
            if variant == "ind":
                b = min(batch or 128, sc.n)
                cfg.optimizer_kwargs.update(perturbation_batch="independent", batch_size=b)
                if batch is not None:
                    cfg.optimizer_kwargs.update(batch_scaling="rho+lr", reference_batch=128)
            else:
                cfg.optimizer_kwargs["perturbation_batch"] = "same"
        return cfg

    return build


def _sweep_name(alg: str, rho: float, factor: float) -> str:
    return f"sweep-{alg}-rho{rho:g}-lrp{factor:g}"


_ALGS = {"rs": ("rs", "same"), "sa-same": ("sa", "same"), "sa-ind": ("sa", "ind")}


def _best_builder(kind: str, seed: int, *, twin: bool = False, batch: int | None = None,
                  length: str = "steps"):  # noqa: ANN202
    """A full-length stage whose setting is the sweep's best ``kind`` (``rs`` or ``sa``):
    :func:`~sharpscope.experiments.arms.best_setting`. ``twin``: the same with ρ = 0."""

    def build(scale: str, out_dir: Path) -> TrainConfig:
        sc = SCALES[scale]
        names = [_sweep_name(a, r, f) for a in _ALGS if a.startswith(kind) for r in sc.rhos
                 for f in sc.lr_perturb_factors]
        best = arm_criteria.best_setting(out_dir, names)
        if best is None:
            raise ConfigError(f"no sweep run of {kind} finished in {out_dir}; nothing to run at full length")
        alg, variant = _ALGS[best["alg"]]
        if batch is not None:
            variant = "ind"
        rho = 0.0 if twin else best["rho"]
        return after_minimizer(alg, seed=seed, rho=rho, lr_perturb=best["lr_perturb"], variant=variant,
                               batch=batch, length=length)(scale, out_dir)

    return build


def escape_stages(scale: str) -> list[Stage]:
    """All stages of the escape study at ``scale`` (see the module docstring)."""
    sc = SCALES[scale]
    stages = [Stage(f"random-init-s{s}", fit("clean", seed=s)) for s in sc.seeds]
    stages += [Stage("pretrain", fit("pretrain")), Stage("finetune", fit("clean"), init_from="pretrain")]
    stages += [Stage(f"sgd-s{s}", after_minimizer(seed=s), init_from="finetune") for s in sc.seeds]
    sweep: list[str] = []
    for factor in sc.lr_perturb_factors:
        for alg, (opt, variant) in _ALGS.items():
            for rho in sc.rhos:
                name = _sweep_name(alg, rho, factor)
                sweep.append(name)
                stages.append(Stage(name, after_minimizer(opt, rho=rho, lr_perturb=factor * ETA, variant=variant,
                                                          length="sweep_steps"), init_from="finetune"))
        name = _sweep_name("sa-ind", 0.0, factor)
        stages.append(Stage(name, after_minimizer("sa", rho=0.0, lr_perturb=factor * ETA, variant="ind",
                                                  length="sweep_steps"), init_from="finetune"))
    after = tuple(sweep)
    for s in sc.seeds:
        stages += [Stage(f"best-rs-s{s}", _best_builder("rs", s), init_from="finetune", after=after),
                   Stage(f"best-sa-s{s}", _best_builder("sa", s), init_from="finetune", after=after),
                   Stage(f"best-sa-rho0-s{s}", _best_builder("sa", s, twin=True), init_from="finetune", after=after)]
        for factor in sc.lr_perturb_factors:
            if factor != 1.0:
                stages.append(Stage(f"sgd-lr{factor * ETA:g}-s{s}", after_minimizer(seed=s, lr=factor * ETA),
                                    init_from="finetune"))
        for b in sc.sa_batches if s in sc.a4_seeds else ():
            stages += [Stage(f"sa-b{b}-s{s}", _best_builder("sa", s, batch=b, length="sweep_steps"),
                             init_from="finetune", after=after),
                       Stage(f"sa-b{b}-rho0-s{s}", _best_builder("sa", s, twin=True, batch=b, length="sweep_steps"),
                             init_from="finetune", after=after)]
    return stages


def label_noise_stages(scale: str) -> list[Stage]:
    """The bad minimizer, then label-noise SGD (p = 0.2) and noiseless SGD at the same step size, per seed."""
    sc = SCALES[scale]
    stages = [Stage("pretrain", fit("pretrain")), Stage("finetune", fit("clean"), init_from="pretrain")]
    for s in sc.seeds:
        stages += [Stage(f"label-noise-s{s}", after_minimizer(seed=s, lr=sc.noise_lr, length="noise_steps",
                                                              label_noise=0.2), init_from="finetune"),
                   Stage(f"noiseless-s{s}", after_minimizer(seed=s, lr=sc.noise_lr, length="noise_steps"),
                         init_from="finetune")]
    return stages



def evaluate_escape(dirs: Mapping[str, Path]) -> dict[str, Any]:
    """A1–A4 (:func:`~sharpscope.experiments.arms.escape_results`) and A5 (:func:`_a5`)."""
    out = arm_criteria.escape_results(dirs)
    a5 = _a5(dirs)
    if a5 is not None:
        out["A5"] = a5
    return out


def _a5(dirs: Mapping[str, Path]) -> dict[str, Any] | None:
    """The smoothing identity at the bad minimizer, computed once into ``<study>/a5.json`` when the whole
    study is evaluated (a run of some stages only reads it if it exists)."""
    if "finetune" not in dirs or not (dirs["finetune"] / "summary.json").is_file():
        return None
    target = dirs["finetune"].parent / "a5.json"
    if target.is_file():
        return jsonsafe.loads(target.read_text())
    scale = RunDirectory(dirs["finetune"]).read_config().get("scale") or "cpu"
    if set(dirs) != {s.name for s in escape_stages(scale)}:
        return None
    return smoothing_check(dirs["finetune"], scale)


def smoothing_check(finetune: Path, scale: str, *, pairing: str = "antithetic") -> dict[str, Any]:
    """A5 at the run ``finetune`` with the sizes of ``scale`` (antithetic pairs unless ``pairing="independent"``),
    judged by :func:`~sharpscope.experiments.smoothing.judge_identity`, written to ``a5.json`` beside it."""
    from sharpscope.experiments import smoothing  # torch.func work, only when A5 runs

    sc = SCALES[scale]
    result = smoothing.identity_at_run(finetune, examples=sc.a5_examples, draws=sc.a5_draws, probes=sc.a5_probes,
                                       counts=sorted({16, 64, sc.a5_draws}), pairing=pairing)
    verdict = smoothing.judge_identity(result, result["nonsmooth"])
    result.update(criterion=smoothing.CRITERION, verdict=verdict.label, reason=verdict.reason)
    atomic_write_bytes(finetune.parent / "a5.json", (jsonsafe.dumps(result, indent=2) + "\n").encode())
    return jsonsafe.loads(jsonsafe.dumps(result))



_ASSUMED = "noise of the committed cpu runs, figures/{}-summary.json"


def detectable_escape(scale: str) -> list[dict[str, Any]]:
    """A1–A4's smallest detectable effects at the scale's seeds (the noise: :data:`_ASSUMED`; a single reading
    has no seed spread and carries its binomial error)."""
    sc, src = SCALES[scale], _ASSUMED.format("escape")
    n, n4 = len(sc.seeds), len(sc.a4_seeds)
    binomial = 0.01415  # two readings of ~28% accuracy on 2 000 test images
    return plan([
        Assumption("A1", "test accuracy, random init − bad minimizer", n, 1, 0.0216, 0.0, 0.01485, src),
        Assumption("A2", "test accuracy, SGD at η end − start", n, 1, 0.0, 0.0, binomial, src),
        Assumption("A3", "tr(H) at the end, best SA − best RS", n, n, 0.424, 0.0019, 2.87, src),
        Assumption("A3", "test accuracy at the end, best SA − best RS", n, n, 0.0, 0.0, binomial, src),
        Assumption("A4", "tr(H), SA with B = 1 − B = 64", n4, n4, 0.424, 0.424, 2.87,
                   src + "; best SA's seed sd and Hutch++ error"),
    ])


def detectable_label_noise(scale: str) -> list[dict[str, Any]]:
    """G6's smallest detectable end-of-run trace difference at the scale's seeds."""
    n = len(SCALES[scale].seeds)
    return plan([Assumption("G6", "tr(H) at the end, label-noise − noiseless SGD", n, n, 18.6, 0.0247, 6.28,
                            _ASSUMED.format("label-noise"))])


_INTERVALS = ("Lines: the mean over an arm's seeds; shaded: the 95% Student-t interval of that mean over seeds "
              "(none for an arm of one seed): the seed part of the verdicts' Welch intervals, which add each "
              "reading's Hutch++ standard error to it. Test accuracy on "
              "the held-out images with 95% Wilson bars for the test-set size (the sampling error the verdicts add "
              "to the seed spread); train accuracy on the probe set. Top right: tr(H) of every seed read at "
              "training-loss levels every run reaches (mean and 95% interval over seeds); the lowest level is the "
              "one the verdicts compare.")
_CAPTION = (_INTERVALS + " tr(H) by Hutch++ on a fixed subset of the clean training images. Not the paper's "
            "setting: the cpu scale fits 1 000 CIFAR-10 images with a GroupNorm CNN (32-64-128 channels), where Ahn "
            "et al. train a ResNet-18 on all 50 000.")


def without_data(_: str) -> dict[str, str]:
    """Without the CIFAR-10 files the study runs on MNIST-1D vectors with a ReLU MLP."""
    return dict.fromkeys((CIFAR10_TRAIN, CIFAR10_TEST), "MNIST-1D and a ReLU MLP used")


ESCAPE = Study("escape", ("A1", "A2", "A3", "A4", "A5"), escape_stages, evaluate_escape, prepare,
               without_data=without_data, figures=(
    Figure("a3", "arms", ("best-sa-s*", "best-sa-rho0-s*", "best-rs-s*", "sgd-s*", "sgd-lr*"),
           "From the bad minimizer (η = 0.001, batch 128): the sweep's best SA and RS, SA's ρ = 0 twin, SGD at η "
           "and SGD at η′. " + _CAPTION),
    Figure("a4", "arms", ("sa-b*",),
           "SA with perturbation batch B (ρ and η′ scaled by √(B/128)) and each B's ρ = 0 twin. " + _CAPTION),
    Figure("a1", "arms", ("random-init-s*", "finetune"),
           "Fitting the clean images from a random initialisation (seeds) and from the confusion-set "
           "pre-training (the bad minimizer). " + _CAPTION),
), detectable=detectable_escape)
LABEL_NOISE = Study("label-noise", ("G6",), label_noise_stages, arm_criteria.label_noise_results, prepare,
                    without_data=without_data, figures=(
    Figure("g6", "arms", ("label-noise-s*", "noiseless-s*"),
           "Label-noise SGD (p = 0.2, fresh noise each step) from the bad minimizer and the same SGD without "
           "noise. " + _CAPTION),
    Figure("trace-accuracy", "trace", ("label-noise-s*",),
           "Label-noise SGD: tr(H) against test accuracy along each seed's run. The legend's Spearman ρ_s is the "
           "G6 criterion's: over the measurements after step 0 (the shared starting point, drawn hollow), with its "
           "percentile-bootstrap 95% interval. Test accuracy with 95% Wilson bars for the test-set size; tr(H) "
           "(Hutch++) with ± 1.96 of its standard error. Not the paper's setting: 1 000 CIFAR-10 images and a "
           "GroupNorm CNN, where Damian et al. train a ResNet on all of CIFAR-10."),
), detectable=detectable_label_noise)
