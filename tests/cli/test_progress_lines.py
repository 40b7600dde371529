"""Progress lines on a non-terminal stderr: rate-limited, one line per report, the stage's count and time."""

from __future__ import annotations

import io

from sharpscope_cli._common import ProgressLines


def test_lines_are_rate_limited_and_say_stage_count_and_elapsed_time() -> None:
    now = [100.0]
    stream = io.StringIO()
    progress = ProgressLines(stream, every=5.0, clock=lambda: now[0])
    for t, done in ((101.0, 1), (104.9, 2), (105.0, 3), (106.0, 4), (110.5, 5)):
        now[0] = t
        progress("top eigenvalues", done, 100)
    assert stream.getvalue().splitlines() == ["top eigenvalues: 3/100 HVPs, 4 s in this stage (5 s in all)",
                                              "top eigenvalues: 5/100 HVPs, 10 s in this stage (10 s in all)"]


def test_each_layer_is_timed_from_its_own_start() -> None:
    """With --per-layer every layer is a stage: its line counts that layer's seconds, not the run's."""
    now = [0.0]
    stream = io.StringIO()
    progress = ProgressLines(stream, every=5.0, clock=lambda: now[0])
    for t, stage, done in ((1.0, "0: top eigenvalues", 1), (6.0, "0: top eigenvalues", 9), (20.0, "2: top eigenvalues", 1),
                           (27.0, "2: top eigenvalues", 8)):
        now[0] = t
        progress(stage, done, 100)
    assert stream.getvalue().splitlines() == ["0: top eigenvalues: 9/100 HVPs, 5 s in this stage (6 s in all)",
                                              "2: top eigenvalues: 1/100 HVPs, 0 s in this stage (20 s in all)",
                                              "2: top eigenvalues: 8/100 HVPs, 7 s in this stage (27 s in all)"]


def test_a_quick_stage_writes_nothing() -> None:
    now = [0.0]
    stream = io.StringIO()
    progress = ProgressLines(stream, every=5.0, clock=lambda: now[0])
    for done in range(1, 20):
        now[0] += 0.25  # 19 products in 4.75 s
        progress("trace", done, 99)
    assert stream.getvalue() == ""
