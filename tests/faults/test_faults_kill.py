"""SIGKILL at chosen and at random write steps, then the same run again: it resumes to exactly the
records of an uninterrupted run, each once (the kill is real: the child process kills itself)."""

from __future__ import annotations

import random
import signal
from collections.abc import Sequence
from pathlib import Path

import pytest

from sharpscope.track import RunDirectory, train
from tests.faults.faults_helpers import run_killer, same_records, tiny

pytestmark = pytest.mark.usefixtures("single_thread")


def test_a_kill_during_the_first_config_write_then_a_rerun_starts_the_run(tmp_path: Path, reference) -> None:
    cfg = tiny()
    out = tmp_path / "run"
    killed = run_killer(out, "replace", 1, cfg)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    left = [p.name for p in out.iterdir()]
    assert left and all(name.startswith(".config.json.") and name.endswith(".tmp") for name in left)
    summary = train(cfg, out)
    assert summary.status == "completed" and same_records(RunDirectory(out), reference(cfg))
    assert not [p for p in out.rglob("*.tmp")], "stale temporary files were cleaned"


CHOSEN = [("after-replace", 2),  # the first checkpoint is in place, its checksum not yet recorded
          ("replace", 4),        # during a checkpoint write: its temporary file is left
          ("append", 3)]         # half of a metrics line is on disk


def kill_chain(tmp_path: Path, reference, kills: int, seed: int,
               chosen: Sequence[tuple[str, int]] = ()) -> tuple[int, int]:
    """Kill one run at the ``chosen`` write steps, then ``kills`` times at random ones (fixed seed),
    then finish it; assert its records equal the uninterrupted run's. Returns (kills that landed,
    records compared)."""
    cfg = tiny()
    out = tmp_path / f"chain-{seed}"
    rng = random.Random(seed)
    plan = list(chosen) + [(rng.choice(["replace", "after-replace", "append", "fsync"]), rng.randint(1, 6))
                           for _ in range(kills)]
    landed = 0
    for point, nth in plan:
        proc = run_killer(out, point, nth, cfg)
        assert proc.returncode in (0, -signal.SIGKILL), proc.stderr
        landed += proc.returncode == -signal.SIGKILL
    summary = train(cfg, out)
    expected = reference(cfg)
    assert summary.status == "completed" and same_records(RunDirectory(out), expected)
    assert summary.measurements == sum(r.get("kind", "measurement") == "measurement" for r in expected)
    return landed, len(expected)


def test_kills_at_chosen_write_steps_in_a_row_lose_nothing(tmp_path: Path, reference) -> None:
    landed, compared = kill_chain(tmp_path, reference, kills=0, seed=0, chosen=CHOSEN)
    assert landed == len(CHOSEN) and compared > 0


@pytest.mark.slow
def test_soak_two_hundred_kills(tmp_path: Path, reference) -> None:
    """The twin of the test above at scale: runs of five planned kills each (a kill planned past the
    end of a resumed run does not land) until 200 have landed, every run's records exact."""
    total = compared = runs = 0
    while total < 200 and runs < 80:
        landed, records = kill_chain(tmp_path, reference, kills=5, seed=runs)
        total, compared, runs = total + landed, compared + records, runs + 1
    print(f"soak: {total} SIGKILLs landed in {runs} runs; {compared} records compared, all equal")  # shown with -s
    assert total >= 200
