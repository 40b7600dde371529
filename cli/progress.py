"""Plain progress lines for a stderr that is not a terminal (a log file, a pipe, a batch job).

A long stage piped to a file would otherwise be silent until it ends. Each line names the stage,
the products done out of its budget and the seconds elapsed; at most one line every ``every``
seconds, so logs stay short.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO


class ProgressLines:
    """``progress(stage, done, total)`` callback writing ``stage: done/total HVPs, t s`` lines to ``stream``."""

    def __init__(self, stream: TextIO, *, every: float = 5.0, unit: str = "HVPs",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream, self.every, self.unit, self.clock = stream, every, unit, clock
        self.start = self.last = clock()

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = self.clock()
        if now - self.last < self.every:
            return
        self.last = now
        self.stream.write(f"{stage}: {done}/{total} {self.unit}, {now - self.start:.0f} s elapsed\n")
        self.stream.flush()
