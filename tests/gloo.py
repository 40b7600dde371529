"""Two (or more) gloo ranks for the data-parallel tests, with a teardown that cannot fail a test by chance.

Each rank joins the group, runs the test's work, marks that it finished, passes a final barrier and
destroys the group. Gloo can still abort a rank with SIGABRT ("terminate called without an active
exception") while its connections close after that barrier, depending on which process reaches its
teardown first. Such an abort comes after every rank finished its work and wrote its results, so it
is accepted (with a warning); any other failure, or an abort before every rank finished, fails the
test.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.multiprocessing.spawn import ProcessExitedException


def _rank(rank: int, fn: Callable[..., None], folder: str, extra: tuple[Any, ...], world: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world)
    try:
        fn(rank, folder, *extra)
        finished(rank, folder)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def spawn_ranks(fn: Callable[..., None], folder: str | Path, *extra: Any, world: int = 2) -> None:
    """Run ``fn(rank, folder, *extra)`` in ``world`` spawned processes joined in one gloo group."""
    start_tolerating_teardown(_rank, (fn, str(folder), extra, world), folder, world)


def finished(rank: int, folder: str | Path) -> None:
    """Mark that ``rank`` finished its work (call before the final barrier)."""
    (Path(folder) / f"finished-rank{rank}").touch()


def start_tolerating_teardown(entry: Callable[..., None], args: tuple[Any, ...], folder: str | Path,
                              world: int = 2) -> None:
    """``mp.start_processes(entry, args, world)``, accepting a SIGABRT in teardown once every rank marked
    itself :func:`finished` (see the module docstring)."""
    try:
        mp.start_processes(entry, args=args, nprocs=world, join=True, start_method="spawn")
    except ProcessExitedException as e:
        finished = all((Path(folder) / f"finished-rank{r}").exists() for r in range(world))
        if not (finished and e.signal_name == "SIGABRT"):
            raise
        warnings.warn(f"a gloo rank aborted in its teardown after every rank finished ({e})", stacklevel=2)
