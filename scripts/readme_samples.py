"""Regenerate the README's sample ``probe --json`` output by running the command the README quotes.

The sample sits between ``<!-- sample: probe-json -->`` and ``<!-- /sample -->`` in README.md, and
the README quotes :data:`COMMAND` verbatim under it. This script runs that command (in this process,
from the repository root, on the committed checkpoint ``docs/samples/demo.safetensors``), keeps the
fields the README shows (:data:`SHOWN`), rounds them, and rewrites the block::

    python scripts/readme_samples.py           # rewrite README.md
    python scripts/readme_samples.py --check   # exit 1 if README.md's numbers disagree with a fresh run

``tests/test_readme_samples.py`` runs the same comparison (:func:`disagreements`). Seconds are
shown but never compared: they vary with the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
COMMAND = "sharpscope probe docs/samples/demo.safetensors --data mnist1d --k 3 --negative --trace --json"
BLOCK = re.compile(r"(<!-- sample: probe-json -->\n```json\n)(.*?)(\n```\n<!-- /sample -->)", re.S)

#: The fields the README shows, in its order: top-level keys, then a few of ``most_negative``,
#: ``trace`` and ``settings``.
SHOWN = {
    "": ("eigenvalues", "residuals", "converged", "hvps", "seconds", "loss", "grad_norm"),
    "most_negative": ("eigenvalue", "residual", "converged", "hvps", "seconds"),
    "trace": ("estimate", "stderr", "num_samples", "hvps", "seconds"),
    "settings": ("probe_examples", "num_batches", "bn", "dim", "dtype", "hvp_mode", "seed", "tol"),
}

#: How close a fresh run must come to the README, by field (relative unless noted). Eigenvalues,
#: loss, gradient norm and the seeded trace differ between machines by round-off only, and the
#: README rounds them to 4-5 significant digits; the most negative eigenvalue (-0.07) is converged
#: to a relative residual of 1e-3 only; residuals are round-off sized, so only their bound is
#: checked; product counts may move by a step or two where a residual sits near the tolerance.
TOLERANCE = {"eigenvalues": 1e-3, "loss": 1e-3, "grad_norm": 1e-3, "most_negative.eigenvalue": 1e-2,
             "trace.estimate": 1e-3, "trace.stderr": 1e-2, "hvps": 0.15, "most_negative.hvps": 0.15}


#: Shown but not compared: the product mode is chosen by timing both modes on the machine at hand.
UNCOMPARED = {"settings.hvp_mode"}


def run(command: str = COMMAND) -> dict[str, Any]:
    """The JSON that ``command`` prints, run in this process from the repository root."""
    from sharpscope_cli.main import app
    from typer.testing import CliRunner

    args = shlex.split(command)
    if args[0] != "sharpscope":
        raise ValueError(f"not a sharpscope command: {command!r}")
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        result = CliRunner().invoke(app, args[1:])
    finally:
        os.chdir(cwd)
    if result.exit_code != 0:
        raise RuntimeError(f"{command!r} exited with {result.exit_code}: {result.output.strip()[-500:]}")
    return json.loads(result.stdout)


def _round(key: str, value: Any) -> Any:
    """A value as the README shows it: eigenvalues to 4 decimals, residuals to 2 digits, seconds to 3."""
    if isinstance(value, list):
        return [_round(key, v) for v in value]
    if isinstance(value, bool) or not isinstance(value, float):
        return value
    if key.startswith("residual"):
        return float(f"{value:.1e}")
    if key == "seconds":
        return float(f"{value:.3g}")
    return float(f"{value:.5g}") if abs(value) < 1 else round(value, 4 if key.startswith("eigen") else 2)


def shown(report: dict[str, Any]) -> dict[str, Any]:
    """The README's abridged view of a probe report: the :data:`SHOWN` fields, rounded."""
    view: dict[str, Any] = {k: _round(k, report[k]) for k in SHOWN[""]}
    for part in ("most_negative", "trace", "settings"):
        view[part] = {k: _round(k, report[part][k]) for k in SHOWN[part]}
    return view


def block(view: dict[str, Any]) -> str:
    """The sample's text: one JSON object, a few fields to a line."""
    def fields(part: dict[str, Any], keys: tuple[str, ...]) -> str:
        return ", ".join(f'"{k}": {json.dumps(part[k])}' for k in keys)

    top, settings = SHOWN[""], SHOWN["settings"]
    return ("{" + fields(view, top[:3]) + ",\n " + fields(view, top[3:]) + ",\n"
            + "".join(f' "{p}": {{{fields(view[p], SHOWN[p])}}},\n' for p in ("most_negative", "trace"))
            + f' "settings": {{{fields(view["settings"], settings[:5])},\n'
            + " " * 14 + fields(view["settings"], settings[5:]) + "}}")


def readme_view(text: str | None = None) -> dict[str, Any]:
    """The values in the README's sample block (valid JSON)."""
    text = README.read_text() if text is None else text
    match = BLOCK.search(text)
    if match is None:
        raise ValueError("README.md has no <!-- sample: probe-json --> block")
    if COMMAND not in text:
        raise ValueError(f"README.md does not quote the sample's command {COMMAND!r}")
    return json.loads(match.group(2))


def _flat(view: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in view.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def disagreements(readme: dict[str, Any], fresh: dict[str, Any]) -> list[str]:
    """Fields where the README's sample and a fresh run's view disagree beyond :data:`TOLERANCE`
    (seconds and :data:`UNCOMPARED` never compared; residuals checked against the run's ``tol`` only; the rest exactly)."""
    problems = []
    tol = fresh["settings"]["tol"]
    old, new = _flat(readme), _flat(fresh)
    if set(old) != set(new):
        problems.append(f"fields differ: README {sorted(set(old) - set(new))}, run {sorted(set(new) - set(old))}")
    for key in sorted(set(old) & set(new)):
        a, b = old[key], new[key]
        if key in UNCOMPARED or key.endswith("seconds"):
            continue
        if key.split(".")[-1].startswith("residual"):
            values = a if isinstance(a, list) else [a]
            if not all(0 <= v < tol for v in values):
                problems.append(f"{key}: README shows {a}, not below tol {tol}")
            continue
        if key in TOLERANCE:
            pairs = list(zip(a, b)) if isinstance(a, list) else [(a, b)]
            if (isinstance(a, list) and len(a) != len(b)) or not all(
                    math.isclose(x, y, rel_tol=TOLERANCE[key]) for x, y in pairs):
                problems.append(f"{key}: README {a}, fresh run {b} (relative tolerance {TOLERANCE[key]})")
        elif a != b:
            problems.append(f"{key}: README {a!r}, fresh run {b!r}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 on a disagreement")
    args = parser.parse_args(argv)
    fresh = shown(run())
    text = README.read_text()
    if args.check:
        problems = disagreements(readme_view(text), fresh)
        for problem in problems:
            print(f"readme_samples: {problem}")
        return 1 if problems else 0
    readme_view(text)  # the block and the quoted command are there
    README.write_text(BLOCK.sub(lambda m: m.group(1) + block(fresh) + m.group(3), text, count=1))
    print(f"readme_samples: rewrote the sample in {README.relative_to(ROOT)} from `{COMMAND}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
