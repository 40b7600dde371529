"""``benchmarks/bench_density.py`` runs its whole path at tiny sizes and writes its tables."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_density_benchmark_smoke_path(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("bench_density", ROOT / "benchmarks" / "bench_density.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.main(["--train-steps", "20", "--runs", "2", "--ref-steps", "12", "--default-steps", "8",
                         "--tols", "0.1", "--cheap", "2x4", "--repeats", "1", "--out", str(tmp_path / "density")])
    rows = {row["setting"]: row for row in result["rows"]}
    assert set(rows) == {"default 2x8", "adaptive tol=0.1", "fixed 2x4"}
    assert rows["default 2x8"]["hvps"] == 16 and rows["fixed 2x4"]["hvps"] == 8
    adaptive = rows["adaptive tol=0.1"]
    assert adaptive["hvps"] == sum(adaptive["run_steps"]) and len(adaptive["run_steps"]) == 2
    assert all(0 < row["density_error"] < 2 for row in rows.values())
    assert len(result["block_price"]) == 3 and all(p["block_cpu_seconds"] > 0 for p in result["block_price"])
    assert json.loads((tmp_path / "density.json").read_text())["rows"][0]["setting"] == "default 2x8"
    assert "| fixed 2x4 |" in (tmp_path / "density.md").read_text()
