"""What importing costs: the figures do not load the training stack, and no module needs an optional extra
to be imported."""

import subprocess
import sys

import pytest

import sharpscope
import sharpscope.track


def _run(code: str) -> None:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_importing_the_plots_loads_neither_the_runner_nor_the_optimizers():
    _run(
        "import sys, sharpscope.plots, sharpscope.plots.runs\n"
        "heavy = [m for m in ('sharpscope.track.runner', 'sharpscope.track.tracker', 'sharpscope.optim',"
        " 'sharpscope.data.cifar') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )


def test_every_module_imports_without_the_optional_extras():
    # The extras are made unimportable (as when they are not installed); every library module must still import.
    _run(
        "import importlib, pkgutil, sys\n"
        "for name in ('transformers', 'tensorboard', 'torch.utils.tensorboard', 'wandb', 'pandas'):\n"
        "    sys.modules[name] = None\n"
        "import sharpscope\n"
        "for info in pkgutil.walk_packages(sharpscope.__path__, 'sharpscope.'):\n"
        "    importlib.import_module(info.name)\n"
        "assert 'pandas' not in sys.modules or sys.modules['pandas'] is None\n"
    )


def test_the_lazy_track_names_resolve_and_unknown_names_fail():
    assert sorted(sharpscope.track.__all__) == sorted(sharpscope.track._HOME)
    for name in sharpscope.track.__all__:
        assert getattr(sharpscope.track, name) is not None
    assert "train" in dir(sharpscope.track)
    with pytest.raises(AttributeError, match="no_such_name"):
        sharpscope.track.no_such_name  # noqa: B018
    from sharpscope.parallel import resolve_device
    from sharpscope.track.runner import resolve_device as old_home
    assert sharpscope.track.resolve_device is resolve_device is old_home
    assert sharpscope.__name__ == "sharpscope"
