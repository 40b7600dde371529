"""``benchmarks/gpu.sh`` runs its whole path at tiny sizes on the CPU (``SMOKE=1``) and writes its tables."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_benchmark_script_smoke_path(tmp_path: Path) -> None:
    env = {**os.environ, "SMOKE": "1", "OMP_NUM_THREADS": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    done = subprocess.run(["bash", "benchmarks/gpu.sh", str(tmp_path), "400"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "stopped" not in done.stderr and "not run" not in done.stderr, done.stderr
    written = {p.name for p in tmp_path.iterdir()}
    assert {"gpu-device.txt", "engine_cpu-cnn.md", "landscape_smoke.md", "large_smoke-tiny.md",
            "large_smoke-llama-tiny.md"} <= written, written
    assert "torch" in (tmp_path / "gpu-device.txt").read_text()
