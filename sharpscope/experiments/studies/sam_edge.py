"""The SAM-edge study (Long & Bartlett): full-batch SAM's λ_max tracks the SAM-edge, below 2/η, on an
MLP and a CNN; ρ = 0 is the GD control."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sharpscope.experiments import criteria
from sharpscope.experiments.recipes import sam_edge, sam_edge_cnn
from sharpscope.experiments.studies.framework import Figure, Stage, Study
from sharpscope.experiments.studies.framework import recipe_stage as _stage

def _sam_stages(scale: str) -> list[Stage]:
    smoke = {"smoke": {"steps": 4}}
    rhos = (0.0, 0.02, 0.1) if scale != "smoke" else (0.0, 0.1)
    mlp = [_stage(f"mlp-rho{r:g}", sam_edge, {"optimizer_kwargs.rho": r}, **smoke) for r in rhos]
    cnn = [_stage(f"cnn-rho{r:g}", sam_edge_cnn, {"optimizer_kwargs.rho": r}, **smoke) for r in (0.0, 0.1)]
    return mlp + cnn


def _sam_evaluate(dirs: Mapping[str, Path]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, path in dirs.items():
        rec = criteria.measurements(path)
        out[name] = criteria.edge_stats(rec) if name.endswith("rho0") else criteria.sam_edge_stats(rec)
    return out



STUDY = Study("sam-edge", ("E5", "E6"), _sam_stages, _sam_evaluate, figures=(
        Figure("mlp", "sharpness", ("mlp-rho*",),
               "Full-batch SAM on a ReLU MLP (mse-mean): λ_max against the SAM-edge (moves with ‖g‖); ρ = 0 is GD."),
        Figure("cnn", "sharpness", ("cnn-rho*",),
               "Full-batch SAM on the conv-ReLU-LayerNorm-maxpool CNN: λ_max against the SAM-edge.")))
