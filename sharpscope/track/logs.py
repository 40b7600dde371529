"""Where a training run's records go besides its run directory: ``TrainConfig.log`` entries, each ``KIND:TARGET``.

=======================  ===============================================================
entry                    sink
=======================  ===============================================================
``tensorboard:DIR``      :class:`~sharpscope.track.sinks.TensorBoardSink` writing to ``DIR``
                         (the run's config as hparams and a text table)
``csv:PATH``             :class:`~sharpscope.track.sinks.CSVSink` writing ``PATH``
``wandb:PROJECT``        :class:`~sharpscope.track.sinks.WandbSink`: a W&B run in ``PROJECT`` named
                         after the run folder, its id kept in the checkpoints so a resumed run
                         continues it (``WANDB_MODE=offline`` works as usual)
=======================  ===============================================================

Each entry is checked when the config is (one :class:`~sharpscope.errors.ConfigError` line naming
``log``); a missing optional package is reported when the run opens its sinks, before any training.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sharpscope.errors import ConfigError

LOG_KINDS = ("tensorboard", "csv", "wandb")


def parse_log(entry: Any) -> tuple[str, str]:
    """``(kind, target)`` of one ``KIND:TARGET`` entry; :class:`ConfigError` (``argument="log"``) otherwise.

    >>> parse_log("tensorboard:runs/gd/tb")
    ('tensorboard', 'runs/gd/tb')
    """
    kind, sep, target = entry.partition(":") if isinstance(entry, str) else ("", "", "")
    if not sep or kind not in LOG_KINDS or not target.strip():
        raise ConfigError(f"log entry {entry!r} must be KIND:TARGET with KIND one of {', '.join(LOG_KINDS)} "
                          "(tensorboard:DIR, csv:PATH, wandb:PROJECT)", argument="log")
    return kind, target


def check_logs(entries: Any) -> list[tuple[str, str]]:
    """Every entry parsed; a list is required and each kind may appear once."""
    if not isinstance(entries, list):
        raise ConfigError(f"log must be a list of KIND:TARGET entries, got {entries!r}", argument="log")
    parsed = [parse_log(e) for e in entries]
    kinds = [kind for kind, _ in parsed]
    twice = sorted({k for k in kinds if kinds.count(k) > 1})
    if twice:
        raise ConfigError(f"log names {', '.join(twice)} more than once; give one target per kind", argument="log")
    return parsed


PACKAGES = {"tensorboard": ("tensorboard", "sharpscope[tensorboard]"), "wandb": ("wandb", "sharpscope[wandb]")}


def check_packages(entries: Sequence[str]) -> None:
    """:class:`ConfigError` naming the install command when an entry's package is missing (before any work)."""
    import importlib.util

    for kind, _ in check_logs(list(entries)):
        if kind in PACKAGES and importlib.util.find_spec(PACKAGES[kind][0]) is None:
            raise ConfigError(f"log {kind}: needs the {PACKAGES[kind][0]} package: pip install '{PACKAGES[kind][1]}'",
                              argument="log")


def new_wandb_id() -> str:
    """A fresh W&B run id (stored in the run's checkpoints so that a resume continues the same W&B run)."""
    return uuid.uuid4().hex[:16]


def open_logs(entries: Sequence[str], *, config: Mapping[str, Any], run_name: str,
              wandb_id: str | None) -> list[Any]:
    """The sinks of ``entries`` (see the module docstring); ``config`` is the run's config."""
    from sharpscope.track.sinks import CSVSink, TensorBoardSink, WandbSink

    sinks: list[Any] = []
    try:
        for kind, target in check_logs(list(entries)):
            if kind == "tensorboard":
                sinks.append(TensorBoardSink(Path(target), hparams=config))
            elif kind == "csv":
                sinks.append(CSVSink(Path(target)))
            else:
                sinks.append(WandbSink(project=target, name=run_name, id=wandb_id, resume="allow",
                                       config=dict(config)))
    except BaseException:
        close_logs(sinks)
        raise
    return sinks


def close_logs(sinks: Sequence[Any]) -> None:
    """Close every sink that has a ``close`` method."""
    for sink in sinks:
        close = getattr(sink, "close", None)
        if callable(close):
            close()
