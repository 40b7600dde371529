"""The flatness study (Foret et al.; Mi et al.): SGD, SAM and Sparse SAM on a BatchNorm-free network;
λ_max and λ_max/λ_5 at the end, test accuracy."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sharpscope.experiments import criteria
from sharpscope.experiments.recipes import sam_flatness
from sharpscope.experiments.studies.framework import Figure, Stage, Study
from sharpscope.experiments.studies.framework import recipe_stage as _stage

def _flat_stages(scale: str) -> list[Stage]:
    return [_stage(opt, lambda s, o=opt: sam_flatness(s, optimizer=o), smoke={"steps": 4, "measure_every": 4})
            for opt in ("sgd", "sam", "sparse-sam")]


def _flat_evaluate(dirs: Mapping[str, Path]) -> dict[str, Any]:
    out: dict[str, Any] = {name: criteria.final_record(criteria.measurements(p)) for name, p in dirs.items()}
    if "sgd" in out and "sam" in out:
        lam_sgd, lam_sam = out["sgd"]["eigenvalues"][0], out["sam"]["eigenvalues"][0]
        out["G3"] = {"lambda_max_sgd_over_sam": lam_sgd / lam_sam, "holds": bool(lam_sgd / lam_sam >= 5)}
    if "sam" in out and "sparse-sam" in out:
        diff = out["sparse-sam"].get("test_acc", math.nan) - out["sam"].get("test_acc", math.nan)
        out["G5"] = {"test_acc_sparse_minus_sam_points": 100 * diff, "holds": bool(diff >= -0.003)}
    return out



STUDY = Study("sam-flatness", ("G3", "G5"), _flat_stages, _flat_evaluate, figures=(
        Figure("spectrum", "sharpness", ("sgd", "sam", "sparse-sam"),
               "SGD vs SAM vs Sparse SAM (SSAM-D, 50%): λ_max along mini-batch training (λ_1..λ_5 at the end "
               "are in the study summary)."),))
