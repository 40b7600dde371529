"""The study framework: named stages with dependencies, run into one folder, resumable.

A study is run by :func:`run_study` into ``out_dir``: derived data sets are written once by the
study's ``prepare`` to ``out_dir/data/``, each stage trains into ``out_dir/<stage>`` (a finished
stage returns its stored summary; a killed one resumes), a stage that starts from another one's
weights has ``init_from = out_dir/<that stage>`` (its latest checkpoint), a stage may also wait
for others (``after``: a full-length run that takes its setting from a sweep), and the study's
numbers go to ``out_dir/<study>-summary.json``. Before the first stage, a study that compares arms over
seeds states the smallest effect each claim can detect (``detectable``:
:mod:`sharpscope.experiments.detectable`): passed to ``notice`` line by line and stored in the summary.

A study that can run without a file of the data root (:mod:`sharpscope.data.root`) says what it does
instead (``without_data``); :func:`run` warns with each such fallback that applies and records them in the
summary (``data_root``: the root and the fallbacks).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sharpscope.data.root import DataFallbackWarning, data_root, fallback_notes
from sharpscope.errors import ConfigError
from sharpscope.experiments.recipes import check_scale
from sharpscope.io import jsonsafe
from sharpscope.io.atomic import atomic_write_bytes
from sharpscope.io.records import RunSummary
from sharpscope.io.studysummary import StudySummary
from sharpscope.track import RunDirectory, TrainConfig, train

Progress = Callable[[str, RunSummary], None]
Notice = Callable[[str], None]
Build = Callable[[str, Path], TrainConfig]


@dataclass(frozen=True)
class Stage:
    """One run of a study: ``build(scale, study_dir)`` gives its config; ``init_from`` names the stage
    whose final weights it starts from; ``after`` names stages that must finish before it is built."""

    name: str
    build: Build
    init_from: str | None = None
    after: tuple[str, ...] = ()


@dataclass(frozen=True)
class Figure:
    """A figure of a study: ``kind`` (a run kind of :data:`sharpscope.plots.kinds.RUN_KINDS`)
    over the finished stages matching the ``fnmatch`` patterns ``stages`` (in that order), saved as
    ``<study>-<stem>``; ``k`` eigenvalues per run in ``sharpness`` figures, and ``log`` for their sharpness axis
    (runs whose λ_max differ by orders of magnitude); ``facts(plotted numbers)`` gives a caption sentence of the
    numbers a verdict reads from them."""

    stem: str
    kind: str
    stages: tuple[str, ...]
    caption: str
    k: int = 1
    log: bool = False
    facts: Callable[[Mapping[str, Any]], str] | None = None


DrawnFigures = list[tuple[str, Any, dict[str, Any], str]]
"""What a study's ``draw`` gives: ``(stem, figure, plotted numbers, caption)`` for each figure."""


@dataclass(frozen=True)
class Study:
    """``stages(scale)``; ``evaluate({stage: run dir})`` gives the criteria; ``prepare(scale, out_dir,
    options)`` writes derived data once and returns what it made; ``draw(summary)`` gives figures drawn
    from the study summary itself, as ``(stem, figure, plotted numbers, caption)``; ``detectable(scale)`` the
    smallest effect each claim can detect at the scale's seeds (:func:`sharpscope.experiments.detectable.plan`);
    ``without_data(scale)`` maps each data-root file the study can do without at ``scale`` to what it does then."""

    name: str
    checks: tuple[str, ...]
    stages: Callable[[str], list[Stage]]
    evaluate: Callable[[Mapping[str, Path]], dict[str, Any]]
    prepare: Callable[[str, Path, Mapping[str, Any]], dict[str, Any]] | None = None
    figures: tuple[Figure, ...] = field(default=())
    draw: Callable[[StudySummary], DrawnFigures] | None = None
    detectable: Callable[[str], list[dict[str, Any]]] | None = None
    without_data: Callable[[str], Mapping[str, str]] | None = None


def data_fallbacks(study: Study, scale: str) -> list[str]:
    """One line per data-root file ``study`` lacks at ``scale`` and what it does instead."""
    return fallback_notes(study.without_data(scale)) if study.without_data is not None else []


def recipe_stage(name: str, cfg: Callable[[str], TrainConfig], overrides: Mapping[str, Any] | None = None,
                 **scaled: Mapping[str, Any]) -> Stage:
    """A stage from a recipe function with ``overrides`` (all scales) and per-scale ``scaled[scale]``."""

    def build(scale: str, _: Path) -> TrainConfig:
        out = cfg(scale)
        both = {**(overrides or {}), **scaled.get(scale, {})}
        return out.with_overrides(both) if both else out

    return Stage(name, build)


def finished_summary(run_dir: Path, cfg: TrainConfig) -> RunSummary | None:
    """The stored summary of a finished run of ``cfg``, also when its ``config.json`` is of an older
    format (read by :meth:`RunDirectory.read_config`), lacks config fields (they count at their defaults) or
    was made by another study sharing the stage (``recipe`` differs); else None."""
    run = RunDirectory(run_dir)
    if not run.config_path.is_file() or not run.summary_path.is_file():
        return None
    stored, new, defaults = run.read_config(), cfg.to_dict(), TrainConfig.defaults()
    if any(stored.get(k, defaults.get(k)) != jsonsafe.loads(jsonsafe.dumps(v)) for k, v in new.items()
           if k != "recipe"):
        return None
    summary = run.read_summary()
    return None if summary is None else RunSummary.from_json({**summary, "already_complete": True})


def summary_path(name: str, out_dir: str | Path) -> Path:
    """Where :func:`run_study` writes study ``name``'s numbers: ``<out_dir>/<name>-summary.json`` (studies
    that share stages, like ``escape`` and ``label-noise``, can share a folder)."""
    return Path(out_dir) / f"{name}-summary.json"


def stage_order(stages: list[Stage], wanted: list[str]) -> list[str]:
    """``wanted`` and every stage they start from or wait for, in the study's declared order."""
    by_name = {s.name: s for s in stages}
    unknown = [s for s in wanted if s not in by_name]
    if unknown:
        raise ConfigError(f"no stage(s) {unknown}; valid: {', '.join(by_name)}")
    order: list[str] = []

    def add(stage: str) -> None:
        spec = by_name[stage]
        for parent in ([spec.init_from] if spec.init_from else []) + list(spec.after):
            add(parent)
        if stage not in order:
            order.append(stage)

    for stage in wanted:
        add(stage)
    return sorted(order, key=list(by_name).index)


def run(study: Study, scale: str, out_dir: str | Path, *, only: list[str] | None = None,
        progress: Progress | None = None, options: Mapping[str, Any] | None = None,
        notice: Notice | None = None) -> StudySummary:
    """Run (or resume) ``study`` into ``out_dir``, write its :class:`StudySummary` to :func:`summary_path` (see the
    module docstring) and return it."""
    from sharpscope.experiments.detectable import lines

    check_scale(scale)
    fallbacks = data_fallbacks(study, scale)
    for note in fallbacks:
        warnings.warn(f"study {study.name}: {note}", DataFallbackWarning, stacklevel=2)
    stages = study.stages(scale)
    by_name = {s.name: s for s in stages}
    try:
        order = stage_order(stages, list(by_name) if only is None else list(only))
    except ConfigError as e:
        raise ConfigError(f"study {study.name!r} has {e}") from None
    out = Path(out_dir)
    data = study.prepare(scale, out, dict(options or {})) if study.prepare is not None else None
    if options and study.prepare is None:
        raise ConfigError(f"study {study.name!r} takes no options, got {sorted(options)}")
    detectable = study.detectable(scale) if study.detectable is not None else None
    if notice is not None:
        for text in lines(detectable or []):
            notice(text)
    summaries: dict[str, RunSummary] = {}
    for stage_name in order:
        stage = by_name[stage_name]
        cfg = stage.build(scale, out)
        cfg.recipe, cfg.scale = f"{study.name}/{stage.name}", scale
        if stage.init_from is not None:
            cfg.init_from = str((out / stage.init_from).resolve())
        summaries[stage.name] = finished_summary(out / stage.name, cfg) or train(cfg, out / stage.name)
        if progress is not None:
            progress(stage.name, summaries[stage.name])
    results = study.evaluate({s: out / s for s in summaries})
    root = data_root()
    made = StudySummary(study=study.name, scale=scale, checks=tuple(study.checks), data=data,
                        data_root={"root": None if root is None else str(root), "fallbacks": fallbacks},
                        stages=summaries, results=results, detectable=detectable)
    text = made.to_text()
    atomic_write_bytes(summary_path(study.name, out), text.encode())
    return StudySummary.from_json(jsonsafe.loads(text))
