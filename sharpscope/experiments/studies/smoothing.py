"""Claim A5 (the randomized-smoothing identity, :mod:`sharpscope.experiments.smoothing`) on a smooth and a
non-smooth CNN, with antithetic pairs.

``E_u ∇f(x+ρu) − ∇f(x) = (ρ²/2)∇tr̄(x)`` rests on a Taylor expansion to third order, so it can only hold
on a network that is three times differentiable. Two networks are fitted on the escape study's clean
images (its ``prepare`` without the confusion set; same normalisation) from seed 0 with its clean-fitting
rule (SGD, lr 0.1, batch 128, until 100% training accuracy, checked every ``fit_every`` steps, or the
step cap ``fit_steps``):

* ``fit-relu-maxpool``: the escape study's GroupNorm CNN (conv-ReLU-GN-maxpool blocks);
* ``fit-gelu-avgpool``: the same CNN with GELU and average pooling (smooth everywhere),

both at the scale's widths.

(Without the CIFAR-10 files: the escape study's MLP with ReLU and with GELU.) At each fitted minimizer the
identity is checked in float64 on the first ``examples`` training images with ``draws`` antithetic
pairs per ρ (independent draws with the option ``pairing=independent``) and ``probes`` Hutchinson
probes, with its noise ceiling, and judged per network by
:func:`~sharpscope.experiments.smoothing.judge_identity`. The escape study checks A5 at the bad
minimizer itself (27 minutes of pre-training at the cpu scale); the identity is local, so a minimizer of
the clean set tests it as well and costs a few minutes.

Scales: the escape study's data and fitting rule at the same scale; ``cpu``: 1 000 images, a 16-32-64
CNN (half the escape study's widths, a quarter of its cost a step), at most 1 600 steps, the identity on
64 images with 64 pairs and 32 probes at ρ ∈ {1e-2, 1e-1}; ``gpu``: the escape study's cpu-scale
32-64-128 CNN on its 16 000 images.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sharpscope.data.root import CIFAR10_TEST, CIFAR10_TRAIN
from sharpscope.errors import ConfigError
from sharpscope.experiments.recipes import fc
from sharpscope.experiments.studies import escape
from sharpscope.experiments.studies.framework import Build, Stage, Study
from sharpscope.io import jsonsafe
from sharpscope.io.atomic import atomic_write_bytes
from sharpscope.io.rundir import read_summary
from sharpscope.track import RunDirectory, TrainConfig


@dataclass(frozen=True)
class IdentityScale:
    """The sizes at one scale: the fits' step cap; the identity check's images, antithetic pairs per ρ, Hutchinson
    probes and radii."""

    channels: tuple[int, ...]  # the CNN's widths (the MLP's, times 4, on vectors)
    fit_steps: int
    examples: int
    draws: int
    probes: int
    rhos: tuple[float, ...]


SCALES: dict[str, IdentityScale] = {
    "smoke": IdentityScale(channels=(4, 8), fit_steps=4, examples=8, draws=4, probes=2, rhos=(1e-2,)),
    "cpu": IdentityScale(channels=(16, 32, 64), fit_steps=1600, examples=64, draws=64, probes=32, rhos=(1e-2, 1e-1)),
    "gpu": IdentityScale(channels=(32, 64, 128), fit_steps=20000, examples=1000, draws=256, probes=64, rhos=(1e-3, 1e-2, 1e-1)),
}
NETWORKS: dict[str, tuple[str, str]] = {"relu-maxpool": ("relu", "max"), "gelu-avgpool": ("gelu", "avg")}
"""Network name → (activation, pooling)."""


def network(activation: str, pool: str) -> escape.Network:
    """The escape study's CNN (GroupNorm) with the scale's ``channels``, ``activation`` and ``pool``; on vectors
    its MLP with ``activation``."""

    def spec(scale: str, info: Mapping[str, Any]) -> dict[str, Any]:
        out = escape.network("cpu", info)
        widths = list(SCALES[scale].channels)
        if out["name"] == "cnn":
            out["kwargs"].update(channels=widths, activation=activation, pool=pool)
            return out
        return fc(out["kwargs"]["in_features"], [4 * c for c in widths], activation)

    return spec


def _fit(activation: str, pool: str) -> Build:
    """The escape study's clean fit of :func:`network`, capped at the scale's ``fit_steps``."""
    build = escape.fit("clean", model=network(activation, pool))

    def capped(scale: str, out_dir: Path) -> TrainConfig:
        cfg = build(scale, out_dir)
        cfg.steps = min(cfg.steps, SCALES[scale].fit_steps)
        return cfg

    return capped


def stages(scale: str) -> list[Stage]:
    """One fit per network."""
    return [Stage(f"fit-{name}", _fit(*act_pool)) for name, act_pool in NETWORKS.items()]


OPTIONS_FILE = "identity-options.json"


def prepare(scale: str, out_dir: Path, options: Mapping[str, Any]) -> dict[str, Any]:
    """The escape study's clean images (no confusion set), and the option ``pairing`` (``antithetic``, the
    default, or ``independent``) stored in ``data/identity-options.json`` for the checks."""
    from sharpscope.experiments.smoothing import PAIRINGS

    unknown = sorted(set(options) - {"pairing"})
    if unknown:
        raise ConfigError(f"unknown smoothing study option(s) {unknown}; valid: pairing")
    pairing = options.get("pairing", "antithetic")
    if pairing not in PAIRINGS:
        raise ConfigError(f"pairing must be one of {', '.join(PAIRINGS)}; got {pairing!r}")
    info = escape.prepare(scale, out_dir, {}, pretrain=False)
    atomic_write_bytes(out_dir / "data" / OPTIONS_FILE, (jsonsafe.dumps({"pairing": pairing}) + "\n").encode())
    return {**info, "pairing": pairing}


def identity_check(run_dir: Path, scale: str, pairing: str = "antithetic") -> dict[str, Any]:
    """A5 at the run ``run_dir`` with the sizes of ``scale``, judged; stored as ``identity.json`` in the run and
    reused while its settings are unchanged."""
    from sharpscope.experiments import smoothing  # torch.func work, only when the check runs

    settings = {**asdict(SCALES[scale]), "pairing": pairing, "seed": 0}
    stored = run_dir / "identity.json"
    if stored.is_file():
        result = jsonsafe.loads(stored.read_text())
        if result.get("settings") == jsonsafe.loads(jsonsafe.dumps(settings)):
            return result
    sc = SCALES[scale]
    result = smoothing.identity_at_run(run_dir, examples=sc.examples, draws=sc.draws, probes=sc.probes,
                                       rhos=sc.rhos, counts=sorted({16, sc.draws}), pairing=pairing)
    verdict = smoothing.judge_identity(result, result["nonsmooth"])
    summary = read_summary(run_dir)
    final = None if summary is None else summary.final_measurement
    result.update(settings=settings, criterion=smoothing.CRITERION, verdict=verdict.label, reason=verdict.reason,
                  minimizer=dict.fromkeys(("step", "train_loss", "train_acc", "test_acc")) if final is None else
                  {"step": final.step, "train_loss": final.train_loss, "train_acc": final.train_acc,
                   "test_acc": final.test_acc})
    atomic_write_bytes(stored, (jsonsafe.dumps(result, indent=2) + "\n").encode())
    return jsonsafe.loads(jsonsafe.dumps(result))


def evaluate(dirs: Mapping[str, Path]) -> dict[str, Any]:
    """``A5-<network>`` for each fitted network: the identity at its minimizer, its noise ceiling and verdict."""
    out: dict[str, Any] = {}
    for name in NETWORKS:
        run_dir = dirs.get(f"fit-{name}")
        if run_dir is None or not (run_dir / "summary.json").is_file():
            continue
        scale = RunDirectory(run_dir).read_config().get("scale") or "cpu"
        chosen = run_dir.parent / "data" / OPTIONS_FILE
        pairing = jsonsafe.loads(chosen.read_text())["pairing"] if chosen.is_file() else "antithetic"
        out[f"A5-{name}"] = identity_check(run_dir, scale, pairing)
    return out


def without_data(_: str) -> dict[str, str]:
    """Without the CIFAR-10 files the two networks are the escape study's MLP with ReLU and with GELU."""
    return dict.fromkeys((CIFAR10_TRAIN, CIFAR10_TEST), "MNIST-1D and MLPs with ReLU and with GELU used")


STUDY = Study("smoothing", ("A5",), stages, evaluate, prepare, without_data=without_data)
