"""Studies: ordered sets of named runs with dependencies, and the claims they check.

The framework (:mod:`~sharpscope.experiments.studies.framework`) runs a study's stages into one
folder, resumably; each study is a module:

* ``eos`` (:mod:`.eos`) — full-batch GD at the edge of stability: a sweep of η (each run should
  settle at its own 2/η), Polyak momentum (3.8/η), cross entropy, and Cohen et al.'s CIFAR-5k setting.
* ``sam-edge`` (:mod:`.sam_edge`) — full-batch SAM against the SAM-edge on an MLP and a CNN.
* ``escape`` and ``label-noise`` (:mod:`.escape`) — escaping a bad global minimizer with RS and SA
  (Ahn et al.) and label-noise SGD (Damian et al.), with their controls, over seeds.
* ``escape-a3`` (:mod:`.escape_a3`) — claim A3 of ``escape`` at equal training loss over three bad
  minimizers, RS and SA at the same ρ and η′, tr(H) with fixed probes, paired test accuracy.
* ``escape-a4`` (:mod:`.escape_a4`) — claim A4 of ``escape`` from those minimizers: SA with perturbation
  batch B = 1, 64, 128, ρ and η′ unscaled and scaled by √(B/128).
* ``sam-flatness`` (:mod:`.flatness`) — SGD, SAM and Sparse SAM: λ_max, λ_max/λ_5, test accuracy.
* ``population`` (:mod:`.population`) — a grid of trained models ranked by sharpness measures against their
  generalisation gap (Kendall's τ, granulated τ; Jiang et al., Andriushchenko et al.).
* ``smoothing`` (:mod:`.smoothing`) — the randomized-smoothing identity (A5) with antithetic pairs on a
  smooth (GELU, average pooling) and a non-smooth (ReLU, max-pooling) CNN.

Scales as for recipes: smoke / cpu / gpu.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sharpscope.errors import ConfigError
from sharpscope.experiments.recipes import check_scale
from sharpscope.experiments.studies import eos, escape, escape_a3, escape_a4, flatness, population, sam_edge, smoothing
from sharpscope.experiments.studies.framework import (
    Figure,
    Notice,
    Progress,
    Stage,
    Study,
    finished_summary,
    recipe_stage,
    run,
    summary_path,
)
from sharpscope.io.studysummary import StudySummary

STUDIES: dict[str, Study] = {
    "eos": eos.STUDY,
    "sam-edge": sam_edge.STUDY,
    "escape": escape.ESCAPE,
    "label-noise": escape.LABEL_NOISE,
    "escape-a3": escape_a3.STUDY,
    "escape-a4": escape_a4.STUDY,
    "sam-flatness": flatness.STUDY,
    "population": population.STUDY,
    "smoothing": smoothing.STUDY,
}

__all__ = ["STUDIES", "Figure", "Stage", "Study", "finished_summary", "recipe_stage", "run_study", "study_stages",
           "summary_path"]


def study_stages(name: str, scale: str) -> list[Stage]:
    """The stages of study ``name`` at ``scale`` (unknown names raise :class:`ConfigError`)."""
    if name not in STUDIES:
        raise ConfigError(f"unknown study {name!r}; valid: {', '.join(STUDIES)}")
    check_scale(scale)
    return STUDIES[name].stages(scale)


def run_study(name: str, scale: str, out_dir: str | Path, *, only: list[str] | None = None,
              progress: Progress | None = None, options: Mapping[str, Any] | None = None,
              notice: Notice | None = None) -> StudySummary:
    """Run (or resume) study ``name`` into ``out_dir`` and write :func:`summary_path`.

    ``only`` restricts to these stages (the stages they start from or wait for are run too).
    ``progress(stage, summary)`` is called after each stage; ``options`` go to the study's data
    preparation (``escape``/``label-noise``: ``construction``); ``notice(line)`` receives, before the first
    stage, one line per claim with the smallest effect it can detect. Returns the study summary
    (:class:`~sharpscope.io.studysummary.StudySummary`: every stage's run summary, the criteria ``results`` and
    ``detectable``, the plan behind those lines).
    """
    if name not in STUDIES:
        raise ConfigError(f"unknown study {name!r}; valid: {', '.join(STUDIES)}")
    return run(STUDIES[name], scale, out_dir, only=only, progress=progress, options=options, notice=notice)
