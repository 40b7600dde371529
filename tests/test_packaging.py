"""Every package folder is installed: pyproject lists packages by hand (the CLI maps cli/ -> sharpscope_cli)."""

from __future__ import annotations

import importlib.util
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


def _check_extras():  # scripts/ is not a package: load the checker by path
    spec = importlib.util.spec_from_file_location("check_extras", ROOT / "scripts" / "check_extras.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_extra_installs_a_package_that_moves_torch() -> None:
    check = _check_extras()
    for extra, requirements in check.extras().items():
        names = {check.requirement_name(r) for r in requirements}
        assert not names & set(check.TORCH_MOVING), f"[{extra}] lists {sorted(names & set(check.TORCH_MOVING))}"
        assert "torch" not in names, f"[{extra}] pins torch; the user's torch is theirs to choose"


def test_requirement_names_are_read_as_pip_reads_them() -> None:
    check = _check_extras()
    assert check.requirement_name("Backpack_for.PyTorch>=1.6; python_version>'3.9'") == "backpack-for-pytorch"
    assert check.requirement_name("curvlinops-for-pytorch[extra]==3.0.1") == "curvlinops-for-pytorch"
    assert check.requirement_name("torchvision") == "torchvision"


def test_a_dry_run_report_that_replaces_torch_is_refused() -> None:
    check = _check_extras()

    def report(*pairs: tuple[str, str]) -> dict:
        return {"install": [{"metadata": {"name": n, "version": v}} for n, v in pairs]}

    assert check.torch_moves(report(("sharpscope", "0.1.0"), ("scipy", "1.17.1")), "2.13.0+cpu") == []
    assert check.torch_moves(report(("torch", "2.13.0+cpu")), "2.13.0+cpu") == []
    assert check.torch_moves(report(("torch", "2.14.1")), "2.13.0+cpu") == [
        "torch 2.13.0+cpu would be replaced by torch 2.14.1"]
    moved = check.torch_moves(report(("backpack_for_pytorch", "1.7.1"), ("torchvision", "0.28.0")), None)
    assert [line.split()[0] for line in moved] == ["backpack-for-pytorch", "torchvision"]
