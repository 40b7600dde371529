"""What ``sharpscope probe`` writes besides its table: the JSON result, the density figure, eigenvectors."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from torch import nn

from sharpscope.curvature import DensityResult
from sharpscope.curvature.operators.objective import select_parameters
from sharpscope.errors import ConfigError
from sharpscope.io import atomic_write_bytes, check_writable, jsonsafe, save_eigenvectors
from sharpscope.probe import ProbeReport

LOG_FLOOR = 1e-6  # the text histogram's bars span masses from this fraction to 1, on a log scale


def density_figure_stem(out: Path) -> Path:
    """``FILE`` → ``FILE-density`` beside it (``.png``, ``.pdf`` and ``.json`` are added)."""
    return out.with_name(f"{out.stem}-density")


def check_outputs(out: Path | None, eigenvectors: Path | None, density: bool) -> None:
    """Fail before any work if an output file cannot be written."""
    if out is not None:
        check_writable(out, "--out")
        if density:
            for suffix in (".png", ".pdf", ".json"):
                check_writable(density_figure_stem(out).with_suffix(suffix), "density figure")
    if eigenvectors is not None:
        check_writable(eigenvectors, "--eigenvectors")
        if out is not None and out.resolve() == eigenvectors.resolve():
            raise ConfigError(f"--out and --eigenvectors name the same file {out}")


def density_text(result: DensityResult, bins: int = 12, width: int = 32) -> str:
    """A compact histogram of the SLQ density: one line per bin, the fraction of eigenvalues in it
    and a bar whose length is log-scaled from ``LOG_FLOOR`` to 1 (so outliers beside the bulk show)."""
    edges, mass = result.histogram(bins)
    lines = [f"spectral density: fraction of eigenvalues per bin (bars log-scaled from {LOG_FLOOR:g} to 1)"]
    for lo, hi, m in zip(edges[:-1].tolist(), edges[1:].tolist(), mass.tolist()):
        length = 0 if m <= 0 else max(1, round(width * (1 - math.log10(max(m, LOG_FLOOR)) / math.log10(LOG_FLOOR))))
        lines.append(f"  [{lo:>11.4g}, {hi:>11.4g})  {m:9.3e}  {'█' * length}")
    return "\n".join(lines)


def write_outputs(report: ProbeReport, payload: dict[str, Any], model: nn.Module, *, out: Path | None,
                  eigenvectors: Path | None, command: list[str]) -> list[Path]:
    """Write the requested files (each atomically); return their paths."""
    written = []
    if out is not None:
        written.append(atomic_write_bytes(out, (jsonsafe.dumps(payload) + "\n").encode()))
        if report.density is not None:
            from sharpscope.plots import density_data, density_figure, save_figure

            label = f"{report.settings.get('operator', 'hessian')} SLQ density"
            written += save_figure(density_figure(report.density, labels=[label]), density_figure_stem(out),
                                   data=density_data(report.density, labels=[label]), command=command)
    if eigenvectors is not None:
        top = report.top
        if top.eigenvectors is None:
            raise ConfigError("the probe computed no eigenvectors to save")
        params = select_parameters(model, None)
        written.append(save_eigenvectors(eigenvectors, top.eigenvalues, top.eigenvectors, names=list(params),
                                         shapes=[list(p.shape) for p in params.values()],
                                         settings=report.settings))
    return written
