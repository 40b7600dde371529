"""Every package folder is installed: pyproject lists packages by hand (the CLI maps cli/ -> sharpscope_cli)."""

from __future__ import annotations

from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed_in_pyproject() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "sharpscope").rglob("__init__.py")}
    assert found | {"sharpscope_cli"} == listed
    assert config["package-dir"] == {"sharpscope_cli": "cli"}


def test_cli_imports_under_its_own_name() -> None:
    import sharpscope_cli.main

    assert sharpscope_cli.main.app.info.help.startswith("Measure the sharpness")
