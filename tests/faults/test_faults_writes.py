"""Checked writes: no output replaces a named pipe (the stand-in here for any special file; never a
real device), and no symbolic link inside a run folder is followed out of it. Every refusal is one
line, before anything is written."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import matplotlib
import pytest
import torch
from sharpscope_cli.main import app
from typer.testing import CliRunner

from sharpscope.errors import ConfigError, StorageError
from sharpscope.io import atomic_write_bytes, check_writable, save_checkpoint
from sharpscope.io.atomic import append_bytes, check_target
from sharpscope.models import ModelSpec
from sharpscope.track import CSVSink, RunDirectory, train
from tests.faults.faults_helpers import same_records, tiny

matplotlib.use("Agg")
pytestmark = pytest.mark.usefixtures("single_thread")


def fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def still_a_fifo(path: Path) -> bool:
    return stat.S_ISFIFO(os.lstat(path).st_mode)


def one_line_error(result, *needles: str) -> None:  # type: ignore[no-untyped-def]
    assert result.exit_code == 1, result.output
    assert result.output.startswith("error: ") and result.output.count("\n") == 1, result.output
    for needle in needles:
        assert needle in result.output, (needle, result.output)


def test_every_writer_refuses_a_named_pipe_and_leaves_it(tmp_path: Path) -> None:
    pipe = fifo(tmp_path / "pipe")
    for write in (lambda: atomic_write_bytes(pipe, b"x"), lambda: append_bytes(pipe, b"x"),
                  lambda: check_writable(pipe, "--out"), lambda: CSVSink(pipe)({"step": 1, "loss": 0.5})):
        with pytest.raises(StorageError, match="is a named pipe, not a regular file; refusing to replace it"):
            write()
        assert still_a_fifo(pipe)
    link = tmp_path / "link-to-pipe"
    link.symlink_to(pipe)  # a link to a special file is refused as well
    with pytest.raises(StorageError, match="named pipe"):
        atomic_write_bytes(link, b"x")
    assert still_a_fifo(pipe) and link.is_symlink()
    with pytest.raises(ConfigError, match="is a folder"):
        check_target(tmp_path)
    assert atomic_write_bytes(tmp_path / "plain", b"ok").read_bytes() == b"ok"  # regular files as before


def test_a_figure_checks_all_three_files_before_writing_the_first(tmp_path: Path) -> None:
    from matplotlib.figure import Figure

    from sharpscope.plots.save import save_figure

    fifo(tmp_path / "fig.json")  # the last of the three files
    with pytest.raises(StorageError, match="named pipe"):
        save_figure(Figure(), tmp_path / "fig", data={"x": [1]})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig.json"] and still_a_fifo(tmp_path / "fig.json")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = ModelSpec("mlp", {"in_features": 40, "num_classes": 10, "widths": [8]})
    torch.manual_seed(0)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "mlp.safetensors", spec.build(), spec=spec)


@pytest.mark.parametrize("flag, name", [("--out", "result.json"), ("--eigenvectors", "vectors.safetensors")])
def test_probe_outputs_refuse_a_named_pipe_before_any_work(tmp_path: Path, checkpoint: Path, flag: str,
                                                           name: str) -> None:
    pipe = fifo(tmp_path / name)
    result = CliRunner().invoke(app, ["probe", str(checkpoint), "--data", "mnist1d", "--n", "8", flag, str(pipe)])
    one_line_error(result, f"{flag} {pipe} is a named pipe")
    assert still_a_fifo(pipe)


def test_plot_and_landscape_outputs_refuse_a_named_pipe(tmp_path: Path, checkpoint: Path) -> None:
    run = tmp_path / "run"
    train(tiny(steps=3, measure_every=3, checkpoint_every=3), run)
    pipe = fifo(tmp_path / "fig.pdf")
    one_line_error(CliRunner().invoke(app, ["plot", str(run), "--out", str(tmp_path / "fig")]), "named pipe")
    assert still_a_fifo(pipe) and not (tmp_path / "fig.png").exists()
    out = tmp_path / "slice"
    out.mkdir()
    pipe = fifo(out / "line.png")
    result = CliRunner().invoke(app, ["landscape", str(checkpoint), "--data", "mnist1d", "--n", "8", "--out", str(out)])
    one_line_error(result, "line.png is a named pipe")
    assert still_a_fifo(pipe) and sorted(p.name for p in out.iterdir()) == ["line.png"]


def test_a_symlinked_metrics_file_is_not_appended_through(tmp_path: Path, reference) -> None:  # type: ignore[no-untyped-def]
    cfg = tiny()
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(cfg, out, progress=lambda t, total, rec: (_ for _ in ()).throw(KeyboardInterrupt) if t == 5 else None)
    outside = tmp_path / "outside.jsonl"
    run = RunDirectory(out)
    before = run.metrics_path.read_bytes()
    outside.write_bytes(before)
    run.metrics_path.unlink()
    run.metrics_path.symlink_to(outside)
    with pytest.raises(StorageError) as info:
        train(cfg, out)
    assert "\n" not in str(info.value) and "metrics.jsonl is a symbolic link" in str(info.value)
    assert outside.read_bytes() == before  # nothing written outside the run folder
    with pytest.raises(StorageError, match="symbolic link"):
        append_bytes(run.metrics_path, b"{}\n")  # the append itself refuses too
    train(cfg, out, force=True)  # --force removes the link (not its target) and starts again
    assert not run.metrics_path.is_symlink() and outside.read_bytes() == before
    assert same_records(run, reference(cfg))


def test_force_unlinks_a_symlinked_checkpoint_folder_and_deletes_nothing_outside(tmp_path: Path) -> None:
    cfg = tiny(steps=4, measure_every=4, checkpoint_every=4)
    out = tmp_path / "run"
    train(cfg, out)
    elsewhere = tmp_path / "elsewhere"
    (out / "checkpoints").rename(elsewhere)
    (out / "checkpoints").symlink_to(elsewhere, target_is_directory=True)
    kept = sorted(p.name for p in elsewhere.iterdir())
    (elsewhere / "step-00000001.pt").write_bytes(b"someone else's file")
    with pytest.raises(StorageError, match="checkpoints is a symbolic link"):
        train(cfg, out)  # a rerun without --force refuses
    train(cfg, out, force=True)
    assert not (out / "checkpoints").is_symlink() and (out / "checkpoints").is_dir()
    assert sorted(p.name for p in elsewhere.iterdir()) == sorted([*kept, "step-00000001.pt"])
    assert (elsewhere / "step-00000001.pt").read_bytes() == b"someone else's file"
