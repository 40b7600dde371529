"""The import graph of the library, read from its source: no package imports one on a higher layer (the
table in docs/conventions.md), and no import cycle (imports inside functions included)."""

from __future__ import annotations

import ast
from pathlib import Path

import sharpscope

ROOT = Path(sharpscope.__file__).parent
LAYERS = {"errors": 0, "validation": 1, "losses": 2, "models": 3, "io": 4, "data": 5, "curvature": 6,
          "parallel": 7, "thresholds": 7, "optim": 7, "measures": 7, "demo": 7,
          "landscape": 8, "track": 8, "probe": 8, "plots": 9, "experiments": 10}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in ROOT.rglob("*.py")}


def resolve(name: str) -> str:
    """The module a dotted name lives in (``sharpscope.curvature.Objective`` → ``sharpscope.curvature``)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def imported(path: Path) -> set[str]:
    """The library modules ``path`` imports, anywhere in it (inside functions and under ``TYPE_CHECKING`` too)."""
    tree = ast.parse(path.read_text())
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1] + [node.module or ""]).strip(".") \
                if node.level else node.module or ""
            if base.startswith("sharpscope"):
                found |= {resolve(f"{base}.{alias.name}") for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {resolve(alias.name) for alias in node.names if alias.name.startswith("sharpscope")}
    found.discard(module_name(path))
    return found


def package(module: str) -> str:
    return module.split(".")[1] if module.count(".") else ""


def test_every_package_is_on_a_layer() -> None:
    assert not {package(m) for m in MODULES} - {""} - set(LAYERS)


def test_no_package_imports_a_higher_one() -> None:
    upward = []
    for name, path in MODULES.items():
        low = package(name)
        if not low:
            continue  # the package root re-exports
        for target in imported(path):
            high = package(target)
            if high and high != low and LAYERS[high] >= LAYERS[low]:
                upward.append(f"{name} -> {target}")
    assert not upward, upward


def test_no_import_cycle() -> None:
    """Not at module level, and not through an import inside a function or under ``TYPE_CHECKING`` either."""
    graph = {name: imported(path) for name, path in MODULES.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt] if nxt in path else [node, nxt]
            if nxt not in state and (cycle := visit(nxt, [*path, nxt])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            assert (cycle := visit(start, [start])) is None, " -> ".join(cycle)
