"""The README's sample ``probe --json`` output is what its quoted command prints today.

Runs the command (on the committed ``docs/samples/demo.safetensors``) and compares with the README's
block field by field, within ``scripts/readme_samples.py``'s stated tolerances: eigenvalues, loss,
gradient norm and the seeded trace to 1e-3 relative, the most negative eigenvalue to 1e-2, residuals
below the run's ``tol``, product counts to 15%, the rest exactly; seconds vary and are not compared.
``python scripts/readme_samples.py`` rewrites the block when this fails for a good reason.
"""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _samples():  # scripts/ is not a package: load the script by path
    spec = importlib.util.spec_from_file_location("readme_samples", ROOT / "scripts" / "readme_samples.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_sample_agrees_with_a_fresh_run() -> None:
    samples = _samples()
    readme = samples.readme_view()
    assert samples.COMMAND.split()[2] == "docs/samples/demo.safetensors" and (ROOT / "docs/samples/demo.safetensors").is_file()
    fresh = samples.shown(samples.run())
    assert samples.disagreements(readme, fresh) == []


def test_the_comparison_catches_a_changed_number() -> None:
    samples = _samples()
    readme = samples.readme_view()
    assert samples.disagreements(readme, copy.deepcopy(readme)) == []
    moved = copy.deepcopy(readme)
    moved["eigenvalues"][0] *= 1.01
    moved["most_negative"]["residual"] = 0.5
    moved["settings"]["dim"] += 1
    moved["seconds"] *= 10  # seconds vary: never a disagreement
    found = [line.split(":")[0] for line in samples.disagreements(readme, moved)]
    assert found == ["eigenvalues", "settings.dim"]
    assert samples.disagreements(moved, readme)[0].startswith("eigenvalues")
