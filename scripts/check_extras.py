"""Check that installing sharpscope's extras keeps the torch already installed.

For each extra (all of pyproject's by default) this asks pip what it would install, without
installing anything::

    pip install --dry-run --report REPORT -c .ci/constraints.txt -e ".[EXTRA]"

and fails if the answer replaces the installed torch or brings in a package known to move or
break it (torchvision, backpack-for-pytorch, curvlinops-for-pytorch). Run it in the environment
you mean to install into::

    python scripts/check_extras.py            # every extra
    python scripts/check_extras.py bench hf   # some

Exit code 0: every extra checked keeps torch (or pip could reach no package index: it says so and
skips); 1: an extra would move torch (one line per extra and package); 2: bad arguments.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parents[1]

#: Packages that replace or break a torch installed beside them: torchvision wheels are built for
#: one torch build (a PyPI torchvision next to a local CPU torch fails with "operator
#: torchvision::nms does not exist", and breaks ``import transformers``); backpack-for-pytorch
#: requires torchvision, and every curvlinops-for-pytorch release requires backpack.
TORCH_MOVING = ("torchvision", "backpack-for-pytorch", "curvlinops-for-pytorch")

#: Phrases in pip's error output that mean no package index could be reached (not a conflict).
_NO_INDEX = ("No matching distribution found", "Could not find a version", "NewConnectionError",
             "Network is unreachable", "Temporary failure in name resolution", "Max retries exceeded")


def normalise(name: str) -> str:
    """A distribution name in PEP 503 form (``Backpack_for.PyTorch`` -> ``backpack-for-pytorch``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    """The distribution name a requirement string starts with (``"torch>=2.4; ..."`` -> ``torch``)."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return normalise(match.group(1))


def extras(pyproject: Path = ROOT / "pyproject.toml") -> dict[str, list[str]]:
    """pyproject's optional dependencies: extra name -> requirement strings."""
    return tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]


def torch_moves(report: dict, installed_torch: str | None) -> list[str]:
    """What in a ``pip --report`` would move torch: one line per offending package.

    torch itself counts when it would be installed at a version other than ``installed_torch``
    (any torch install counts when ``installed_torch`` is None and the list holds a torch-moving package).
    """
    problems = []
    for item in report.get("install", []):
        name, version = normalise(item["metadata"]["name"]), item["metadata"]["version"]
        if name == "torch" and installed_torch is not None and version != installed_torch:
            problems.append(f"torch {installed_torch} would be replaced by torch {version}")
        elif name in TORCH_MOVING:
            problems.append(f"{name} {version} would be installed (it moves or breaks torch)")
    return problems


def dry_run(extra: str, constraints: Path) -> tuple[dict | None, str]:
    """pip's report for installing ``.[extra]`` with the constraints, or None and pip's last error line."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", str(out),
               "-c", str(constraints), "-e", f"{ROOT}[{extra}]"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            lines = [ln for ln in done.stderr.splitlines() if ln.strip() and not ln.startswith("WARNING")]
            return None, lines[-1] if lines else f"pip exited with {done.returncode}"
        return json.loads(out.read_text()), ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("extras", nargs="*", help="extras to check (default: every extra in pyproject.toml)")
    parser.add_argument("--constraints", type=Path, default=ROOT / ".ci" / "constraints.txt")
    args = parser.parse_args(argv)
    known = extras()
    wanted = args.extras or sorted(known)
    unknown = [e for e in wanted if e not in known]
    if unknown:
        print(f"check_extras: unknown extra {unknown[0]!r}; pyproject has {', '.join(sorted(known))}", file=sys.stderr)
        return 2
    if not args.constraints.is_file():
        print(f"check_extras: constraints file {args.constraints} does not exist", file=sys.stderr)
        return 2
    try:
        installed = metadata.version("torch")
    except metadata.PackageNotFoundError:
        installed = None
    failed = False
    for extra in wanted:
        report, error = dry_run(extra, args.constraints)
        if report is None:
            if any(phrase in error for phrase in _NO_INDEX):
                print(f"check_extras: skipped [{extra}]: pip reached no index that has its packages ({error})")
                continue
            print(f"check_extras: [{extra}] does not resolve with {args.constraints.name}: {error}")
            failed = True
            continue
        problems = torch_moves(report, installed)
        for problem in problems:
            print(f"check_extras: [{extra}] {problem}")
        failed |= bool(problems)
        if not problems:
            print(f"check_extras: [{extra}] keeps torch {installed or '(none installed)'}; "
                  f"{len(report.get('install', []))} packages to install")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
