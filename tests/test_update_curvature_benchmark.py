"""``benchmarks/bench_update_curvature.py`` runs its whole path on a short smoke recipe and writes its tables."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("single_thread")


def test_update_curvature_benchmark_smoke_path(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("bench_update_curvature", ROOT / "benchmarks" / "bench_update_curvature.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "uc"
    bench.main(["--scale", "smoke", "--recipes", "eos-gd", "eos-adam", "--steps", "6", "--out", str(out)])
    result = json.loads(out.with_suffix(".json").read_text())
    gd, adam = result["recipes"]
    assert gd["trajectories_identical"] and gd["readings"] == {"lambda": 3, "kappa_hvp": 6, "kappa_fd": 6}
    assert gd["compared"] == "kappa / eigenvalues[0]"
    assert adam["compared"] == "kappa_preconditioned / preconditioned_eigenvalues[0]"
    assert 0 < gd["ratio_kappa_over_lambda"]["all"]["median"] <= 1 + 1e-6  # a Rayleigh quotient over λ_max
    assert gd["cost_per_reading"]["kappa_hvp"]["hvps"] == 1 and gd["cost_per_reading"]["kappa_fd"]["forwards"] == 3
    assert "## eos-adam" in out.with_suffix(".md").read_text()
