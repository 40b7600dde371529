"""``benchmarks/bench_large.py`` runs its whole path on a tiny GPT-2 and writes its tables (extra hf)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
ROOT = Path(__file__).resolve().parents[1]


def test_large_benchmark_smoke_path(tmp_path: Path) -> None:
    out = tmp_path / "large"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_large.py"), "--tiny", "--skip", "pyhessian",
                           "--seqs", "1", "--seq-len", "16", "--density-steps", "5", "--trace-matvecs", "2",
                           "--basis-steps", "3", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.with_suffix(".json").read_text())
    stages = result["stages"]
    assert stages["gradient"]["gradient_seconds"] > 0
    assert stages["product rev-rev"]["product_over_gradient"] > 0
    top = stages["lambda_max (lanczos, defaults)"]
    assert top["hvps"] > 0 and top["memory"]["peak_vector_bytes"] <= (top["memory"]["budget_bytes"] or float("inf"))
    assert stages["trace (hutchinson, 2 probes)"]["hvps"] == 2
    assert stages["density (slq, 1 x 5)"]["hvps"] == 5
    assert any(name.startswith("lanczos(k=1) on a diagonal operator") for name in stages)
    basis = stages["lanczos step, basis on device vs host (3 steps each)"]
    assert basis["hvps"] == 6 and basis["device_step_seconds"] > 0 and basis["host_over_device"] > 0
    assert "| lambda_max (lanczos, defaults) |" in out.with_suffix(".md").read_text()
