"""Random sequences of (start, kill, corrupt a file, resume) on a tiny run: the final records equal
an uninterrupted run's, or the run refuses in one clear line. Kills here are in-process (an
exception that no handler catches, raised at a write step); test_faults_kill.py kills for real."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sharpscope.io.atomic as atomic
from sharpscope.errors import SharpscopeError
from sharpscope.io.jsonsafe import without_timings
from sharpscope.track import RunDirectory, train
from tests.faults.faults_helpers import flip_bit, tiny

pytestmark = pytest.mark.usefixtures("single_thread")


class Killed(BaseException):
    """A kill: nothing catches it (the run's own cleanup of temporary files aside)."""


def run_until(out: Path, stop_step: int | None, write_kill: tuple[str, int] | None) -> None:
    """Start or resume the run; stop it at ``stop_step`` (progress) or at the n-th write step."""
    def progress(t: int, total: int, record: dict | None) -> None:
        if stop_step is not None and t == stop_step:
            raise Killed
    real_replace, real_fsync = os.replace, os.fsync
    count = {"n": 0}

    class KillingOS:
        def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
            return getattr(os, name)

        @staticmethod
        def replace(src, dst):  # type: ignore[no-untyped-def]
            count["n"] += 1
            if write_kill and write_kill[0] == "before-replace" and count["n"] == write_kill[1]:
                raise Killed
            real_replace(src, dst)
            if write_kill and write_kill[0] == "after-replace" and count["n"] == write_kill[1]:
                raise Killed

        @staticmethod
        def fsync(fd):  # type: ignore[no-untyped-def]
            real_fsync(fd)

    atomic.os = KillingOS()  # type: ignore[assignment]
    try:
        train(tiny(), out, progress=progress)
    except Killed:
        pass
    finally:
        atomic.os = os


def corrupt(out: Path, what: str) -> None:
    run = RunDirectory(out)
    latest = run.latest_checkpoint()
    lines = run.metrics_path.read_text().splitlines(keepends=True) if run.metrics_path.is_file() else []
    if what == "flip-checkpoint" and latest is not None:
        flip_bit(latest[1])
    elif what == "truncate-metrics" and lines:
        run.metrics_path.write_text("".join(lines[:len(lines) // 2]))
    elif what == "duplicate-record" and lines:
        run.metrics_path.write_text("".join(lines + lines[-1:]))
    elif what == "garbage-record" and lines:
        run.metrics_path.write_text("".join(lines[:1] + ["\x00{not json\n"] + lines[1:]))
    elif what == "empty-metrics" and run.metrics_path.is_file():
        run.metrics_path.write_text("")
    elif what == "torn-summary" and run.summary_path.is_file():
        run.summary_path.write_text('{"status": "comp')
    elif what == "stale-temporary" and out.is_dir():
        (out / ".metrics.jsonl.zz9.tmp").write_text("half")


ACTIONS = st.one_of(
    st.tuples(st.just("stop"), st.integers(0, 12)),
    st.tuples(st.sampled_from(["before-replace", "after-replace"]), st.integers(1, 12)),
    st.tuples(st.just("corrupt"), st.sampled_from(["flip-checkpoint", "truncate-metrics", "duplicate-record",
                                                   "garbage-record", "empty-metrics", "torn-summary",
                                                   "stale-temporary"])),
)


@pytest.fixture(scope="module")
def expected(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out = tmp_path_factory.mktemp("sequence-reference") / "run"
    train(tiny(), out)
    return without_timings(RunDirectory(out).read_metrics())


@settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(actions=st.lists(ACTIONS, min_size=1, max_size=4))
def test_any_sequence_of_kills_and_corruptions_ends_exact_or_refused(expected: list[dict], actions: list) -> None:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "run"
        for kind, arg in actions:
            if kind == "stop":
                run_until(out, arg, None)
            elif kind == "corrupt":
                corrupt(out, arg)
            else:
                run_until(out, None, (kind, arg))
        try:
            summary = train(tiny(), out)
        except SharpscopeError as e:  # a refusal must be one line that names the problem
            assert "\n" not in str(e) and str(out) in str(e)
            return
        assert summary.status == "completed"
        assert without_timings(RunDirectory(out).read_metrics()) == expected
        assert summary.measurements == sum(r.get("kind", "measurement") == "measurement" for r in expected)
