"""Run a training config and SIGKILL this process at the N-th call of one write step.

Usage: ``python killer.py OUT POINT N CONFIG_JSON``; POINT is one of

* ``replace``: just before ``os.replace`` moves a finished temporary file into place (config,
  checkpoint, manifest, metrics rewrite, summary): the temporary file is left behind;
* ``after-replace``: just after it (the file is in place, nothing after it happened);
* ``append``: in the middle of appending a metrics line (half the line is written and fsynced);
* ``fsync``: before the fsync of any write.

Exit status 0 means the run finished before the N-th call (nothing was killed).
"""

from __future__ import annotations

import json
import os
import signal
import sys

import torch

torch.set_num_threads(1)
out, point, nth, config = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
calls = {"n": 0}


def hit() -> bool:
    calls["n"] += 1
    return calls["n"] == nth


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


import sharpscope.io.atomic as atomic  # noqa: E402
import sharpscope.io.rundir as rundir  # noqa: E402

real_replace, real_fsync = os.replace, os.fsync


class PatchedOS:
    """``os`` as the atomic writer sees it, with the kill point in place."""

    def __getattr__(self, name: str):
        return getattr(os, name)

    @staticmethod
    def replace(src, dst):  # type: ignore[no-untyped-def]
        if point == "replace" and hit():
            die()
        real_replace(src, dst)
        if point == "after-replace" and hit():
            die()

    @staticmethod
    def fsync(fd):  # type: ignore[no-untyped-def]
        if point == "fsync" and hit():
            die()
        real_fsync(fd)


atomic.os = PatchedOS()  # type: ignore[assignment]
if point == "append":
    real_append = rundir.RunDirectory.append_metric

    def append_metric(self, record):  # type: ignore[no-untyped-def]
        if hit() and not self.has_metric(*rundir.record_key(record)):
            line = rundir.jsonsafe.dumps(dict(record)) + "\n"
            with open(self.metrics_path, "a", encoding="utf-8") as f:
                f.write(line[: len(line) // 2])
                f.flush()
                real_fsync(f.fileno())
            die()
        return real_append(self, record)

    rundir.RunDirectory.append_metric = append_metric  # type: ignore[method-assign]

from sharpscope.track import train  # noqa: E402

train(config, out)
