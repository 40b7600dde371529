"""The run-directory format version and every migration from an older format to the current one.

``config.json`` carries ``"format_version"`` (:data:`FORMAT_VERSION`), written by
:meth:`~sharpscope.io.rundir.RunDirectory.create`. A config without it has version 0. Loading a config
(:meth:`RunDirectory.read_config`, :meth:`TrainConfig.from_dict`) runs it through :func:`migrate_config`:
each migration takes the config of one version to the next, so a config of any known version comes out in
the current layout (without the version key, which is the directory's, not the run's); a version newer than
this sharpscope is refused with one line.

Versions:

* 0 — no ``format_version``. In a train config (one with ``model``) the curvature settings may be flat top-level keys (``"k": 2``) instead of
  the ``"curvature"`` dict; ``"allow_tf32": true`` stands for ``precision = "tf32"``; a curvature setting the
  config lacks takes the value such runs used (:data:`CURVATURE_V0`).
  ``metrics.jsonl`` may hold records without the checksum members (:mod:`sharpscope.io.recordlines`); such a
  file is read unverified (:func:`records_v0`) and gets its checksums at the next write.
* 1 — ``format_version: 1``; the curvature settings complete under ``"curvature"``.

Two migrations do not depend on the version: a config written before a field was added means that field at
its default (:func:`with_added_fields`, applied when a run resumes), and a sparse-SAM optimizer state saved
before its ``scored`` flag existed gets the flag from its masks (:func:`with_scored_flag`).

>>> migrate_config({"model": {"name": "mlp"}, "k": 3, "allow_tf32": True})["curvature"]["k"]
3
>>> migrate_config({"model": {"name": "mlp"}, "format_version": 1}) == {"model": {"name": "mlp"}}
True
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from sharpscope.errors import ConfigError
from sharpscope.io.recordlines import NO_DIGEST, Scan

FORMAT_VERSION = 1
VERSION_KEY = "format_version"


def format_version(config: Mapping[str, Any]) -> int:
    """The format version a stored config declares (0 without one); :class:`ConfigError` for one that is not
    a known version (newer than this sharpscope, or not a non-negative integer)."""
    version = config.get(VERSION_KEY, 0)
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise ConfigError(f"{VERSION_KEY} must be a non-negative integer, got {version!r}", argument=VERSION_KEY)
    if version > FORMAT_VERSION:
        raise ConfigError(f"run directory format {version} is newer than this sharpscope reads (up to "
                          f"{FORMAT_VERSION}); upgrade sharpscope to load it", argument=VERSION_KEY)
    return version


#: The curvature settings of a version-0 run and the values it used for those its config lacks (the run
#: defaults of that format: no graph cache).
CURVATURE_V0: dict[str, Any] = {
    "k": 1, "tol": 0.001, "max_iter": None, "stop": "residual", "trace_method": "hutch++", "trace_matvecs": 99,
    "bn": "eval", "hvp_mode": "rev-rev", "block_size": 8, "precision": "strict", "compile": False, "block": None,
    "cache_graphs": False, "guards": 1, "memory_budget": None, "basis_location": "device",
    "weight_precision": "upcast"}


def _v0_to_v1(config: dict[str, Any]) -> dict[str, Any]:
    """A train config's (one with ``model``) flat curvature keys and ``allow_tf32`` into ``"curvature"``,
    completed with :data:`CURVATURE_V0`; other configs unchanged. A key given both flat and nested raises
    :class:`ConfigError`."""
    nested = config.get("curvature", {})
    if "model" not in config or not isinstance(nested, Mapping):
        return config  # TrainConfig.from_dict reports the bad value
    flat = {key: config.pop(key) for key in CURVATURE_V0 if key in config}
    if config.pop("allow_tf32", False) is True:
        flat["precision"] = "tf32"
    twice = sorted(set(flat) & set(nested))
    if twice:
        raise ConfigError(f"config gives {', '.join(twice)} both at the top level and under 'curvature'",
                          argument="curvature")
    config["curvature"] = {**CURVATURE_V0, **flat, **nested}
    return config


#: ``MIGRATIONS[v]`` takes a config of version ``v`` to version ``v + 1``.
MIGRATIONS: tuple[Callable[[dict[str, Any]], dict[str, Any]], ...] = (_v0_to_v1,)


def migrate_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` of any known format version in the current layout, without ``format_version``; the
    same meaning. Unknown versions raise :class:`ConfigError` (:func:`format_version`)."""
    version = format_version(config)
    out = {k: v for k, v in config.items() if k != VERSION_KEY}
    for migration in MIGRATIONS[version:]:
        out = migration(out)
    return out


def stamped(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` (current layout) with the current ``format_version``: what ``config.json`` holds."""
    return {**config, VERSION_KEY: FORMAT_VERSION}


def with_added_fields(config: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` with each top-level field of ``defaults`` it lacks at its default: a config written before
    a field was added means that field at its default. Fields ``config`` has are kept as they are.

    >>> with_added_fields({"steps": 5}, {"steps": 10, "keep_checkpoints": False})
    {'keep_checkpoints': False, 'steps': 5}
    """
    return {**{key: value for key, value in defaults.items() if key not in config}, **config}


#: The keys of a sparse-SAM optimizer's extra state that hold its masks (one per parameter) and whether
#: they were scored (an unscored ``"fisher"``/``"nm"`` mask is all zeros until scores arrive).
MASKS_KEY = "masks"
SCORED_KEY = "scored"


def with_scored_flag(state: Mapping[str, Any]) -> dict[str, Any]:
    """A sparse-SAM extra state with :data:`SCORED_KEY`: one saved before the flag existed was scored iff
    any entry of its masks is nonzero (``any(mask ≠ 0)``; an unscored mask is all zeros). A state with the
    flag, or without masks, comes back unchanged (a copy)."""
    out = dict(state)
    if MASKS_KEY in out and SCORED_KEY not in out:
        out[SCORED_KEY] = any(bool((mask != 0).any()) for mask in out[MASKS_KEY])
    return out


def records_v0(scan: Scan) -> Scan:
    """The scan of a ``metrics.jsonl`` with the records of format 0 accepted unverified: in a file where no
    line carries a digest (``scan.checked`` False), a line whose only problem is :data:`NO_DIGEST` is a
    readable record of that format. A checksummed file's scan is returned unchanged."""
    if scan.checked:
        return scan
    return replace(scan, lines=[replace(line, problem=None) if line.problem == NO_DIGEST else line
                                for line in scan.lines])
