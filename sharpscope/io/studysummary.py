"""A study's numbers (``<study>-summary.json``) as a typed record, :class:`StudySummary`.

On disk a study summary is the strict-JSON object ``{"study", "scale", "checks", "data", "data_root",
"stages": {stage: run summary}, "results", "detectable"}`` (``data_root`` and ``detectable`` only where the
study has them). Each stage is a :class:`~sharpscope.io.records.RunSummary`; ``data``, ``data_root``,
``results`` and ``detectable`` are the study's own JSON, with the stored ``"NaN"``/``"Infinity"`` strings
decoded into floats. Unknown keys are kept in ``extra`` and the stored key order is remembered, so
``StudySummary.from_json(s).to_json() == s`` for every stored summary ``s``.

>>> s = StudySummary.from_json({"study": "eos", "scale": "cpu", "checks": ["E1"], "data": None,
...                             "stages": {"gd": {"status": "completed", "step": 2}}, "results": {"r": "NaN"}})
>>> s.stages["gd"].status, s.results, s.to_json()["results"]
('completed', {'r': nan}, {'r': 'NaN'})
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sharpscope.errors import DataError
from sharpscope.io import jsonsafe
from sharpscope.io.records import RunSummary, ordered_json

_ORDER = ("study", "scale", "checks", "data", "data_root", "stages", "results", "detectable")
_OPTIONAL = frozenset({"data_root", "detectable"})  # left out of a summary made in code when None


@dataclass(frozen=True)
class StudySummary:
    """What a study run wrote: its name, scale and claims (``checks``), the derived data it prepared
    (``data``), the data root with the fallbacks used (``data_root``), every stage's run summary, the criteria
    (``results``) and the smallest effects each claim could detect, stated before the first stage
    (``detectable``)."""

    study: str
    scale: str
    checks: tuple[str, ...] = ()
    data: dict[str, Any] | None = None
    data_root: dict[str, Any] | None = None
    stages: dict[str, RunSummary] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    detectable: list[dict[str, Any]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    keys: tuple[str, ...] = field(default=(), repr=False, compare=False)

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> StudySummary:
        """The typed summary of a stored one; :class:`DataError` when ``study`` or ``scale`` is not a string,
        ``stages`` not an object of run summaries or ``results`` not an object."""
        if not isinstance(record, Mapping):
            raise DataError(f"a study summary must be a JSON object, got {type(record).__name__}")
        study, scale = record.get("study"), record.get("scale")
        stages, results = record.get("stages", {}), record.get("results", {})
        if not isinstance(study, str) or not isinstance(scale, str):
            raise DataError(f"a study summary needs a string 'study' and 'scale', got {study!r} and {scale!r}")
        if not isinstance(stages, Mapping) or not isinstance(results, Mapping):
            raise DataError("a study summary's 'stages' and 'results' must be JSON objects")
        checks = record.get("checks") or []
        if not isinstance(checks, list) or not all(isinstance(c, str) for c in checks):
            raise DataError(f"a study summary's 'checks' must be a list of claim names, got {checks!r}")
        if not isinstance(record.get("data"), (Mapping, type(None))):
            raise DataError(f"a study summary's 'data' must be a JSON object or null, got {record.get('data')!r}")
        return cls(study=study, scale=scale, checks=tuple(checks),
                   data=jsonsafe.decode(record.get("data")), data_root=jsonsafe.decode(record.get("data_root")),
                   stages={str(k): RunSummary.from_json(v) for k, v in stages.items()},
                   results=jsonsafe.decode(dict(results)), detectable=jsonsafe.decode(record.get("detectable")),
                   extra={k: v for k, v in record.items() if k not in _ORDER}, keys=tuple(record))

    def to_json(self) -> dict[str, Any]:
        """The summary as stored: strict-JSON types, the stored key order when it was read from a file (a summary
        made in code leaves out ``data_root`` and ``detectable`` when None), ``extra`` kept."""
        made = tuple(k for k in _ORDER if k not in _OPTIONAL or getattr(self, k) is not None)
        return ordered_json(self.keys or (*made, *self.extra), _ORDER, self.extra, self._stored)

    def _stored(self, key: str) -> Any:
        """The stored value of the field ``key``."""
        if key == "stages":
            return {name: s.to_json() for name, s in self.stages.items()}
        return jsonsafe.to_jsonable(getattr(self, key))

    def to_text(self) -> str:
        """The file's text: :meth:`to_json` as strict JSON, indented by 2, with a final newline."""
        return jsonsafe.dumps(self.to_json(), indent=2) + "\n"

    @property
    def diverged(self) -> list[str]:
        """The stages whose run diverged (``status == "diverged"``), in stage order."""
        return [name for name, s in self.stages.items() if s.status == "diverged"]


def read_study_summary(path: str | os.PathLike[str]) -> StudySummary:
    """The study summary stored in the file ``path``; :class:`DataError` naming the file when it is not one."""
    try:
        return StudySummary.from_json(jsonsafe.loads(Path(path).read_text(encoding="utf-8")))
    except (DataError, ValueError) as e:
        raise DataError(f"{path}: not a study summary ({e})") from None
