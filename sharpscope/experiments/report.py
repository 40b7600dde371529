"""Markdown tables of a study's arms and verdicts, written from its summary (``<study>-summary.json``).

``python -m sharpscope.experiments.report runs/escape/escape-summary.json`` prints the tables that
``docs/reproductions.md`` quotes, so every number there is one the criteria code computed.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from typing import Any

from sharpscope.experiments.evidence import SeedStats
from sharpscope.io.studysummary import StudySummary, read_study_summary


def _pm(stored: Mapping[str, Any] | None, scale: float = 1.0, digits: int = 3) -> str:
    """A stored :class:`~sharpscope.experiments.evidence.SeedStats` as ``mean ± std`` (``–`` without a mean)."""
    s = SeedStats.from_dict(stored or {})
    if not math.isfinite(s.mean):
        return "–"
    text = f"{s.mean * scale:.{digits}g}"
    return f"{text} ± {s.std * scale:.{digits - 1}g}" if s.n > 1 and math.isfinite(s.std) else text


def arms_table(arms: Mapping[str, Mapping[str, Any]]) -> str:
    """One row per arm: seeds, tr(H) at the start and the end, tr(H)/L, test accuracy (± its binomial
    standard error), the lowest train accuracy along the runs, and the runs' statuses."""
    rows = ["| arm | seeds | tr(H) start | tr(H) end | tr(H)/L end | λ_max end | test acc end (%) | binomial SE (pts) "
            "| min train acc (%) | status |", "|---|---|---|---|---|---|---|---|---|---|"]
    for arm, a in arms.items():
        status = ", ".join(sorted({str(s) for s in a.get("status", [])}))
        rows.append(f"| {arm} | {a.get('seeds')} | {_pm(a.get('trace_start'))} | {_pm(a.get('trace'))} "
                    f"| {_pm(a.get('trace_over_loss'))} | {_pm(a.get('lambda_max'))} | {_pm(a.get('test_acc'), 100)} "
                    f"| {_points(a.get('test_acc_stderr'))} | {_points(a.get('min_train_acc'))} | {status} |")
    return "\n".join(rows)


def _points(x: Any) -> str:
    """A fraction in points with two decimals (``12.34``); ``–`` when not a finite number."""
    return f"{100 * x:.2f}" if isinstance(x, (int, float)) and math.isfinite(x) else "–"


def _num(x: Any, scale: float = 1.0, digits: int = 3) -> str:
    return f"{float(x) * scale:.{digits}g}" if isinstance(x, (int, float)) and math.isfinite(float(x)) else "–"


def _interval(pair: Any, scale: float = 1.0) -> str:
    if not isinstance(pair, (list, tuple)) or len(pair) != 2:
        return "–"
    lo, hi = (float(v) if isinstance(v, (int, float)) else math.nan for v in pair)  # "NaN" in JSON
    return f"[{lo * scale:.3g}, {hi * scale:.3g}]" if math.isfinite(lo) and math.isfinite(hi) else "–"


def verdict_text(r: Mapping[str, Any]) -> str:
    """``"inconclusive (MDE 2.1)"``: a stored verdict with the minimum detectable effect when inconclusive."""
    verdict = str(r.get("verdict", "–"))
    mde = r.get("mde")
    if verdict == "inconclusive" and isinstance(mde, (int, float)) and math.isfinite(mde):
        verdict += f" (MDE {mde:.3g})"
    return verdict


def comparison_table(title: str, comparisons: Mapping[str, Mapping[str, Any]]) -> str:
    """Per compared arm: for tr(H), test accuracy (points), tr(H)/L and tr(H) at the lowest common loss (and, from
    ``escape-a3`` and ``escape-a4``, tr(H) from shared probes, its tr(H)/L and the Jacobian trace), the difference of means, its 95% interval
    (seeds or minimizers, and estimator error), the minimum detectable effect, and the verdict of "the first arm
    is better"."""
    rows = [f"| {title} | quantity | difference of means | 95% interval | MDE | verdict |", "|---|---|---|---|---|---|"]
    for other, c in comparisons.items():
        for key in ("trace", "trace_paired", "trace_per_loss", "jacobian_trace", "test_acc", "trace_over_loss",
                    "trace_at_lowest_common_loss"):
            if key not in c:
                continue
            d = c[key]
            scale = 100 if key == "test_acc" else 1
            rows.append(f"| vs {other} | {key} | {_num(d.get('difference'), scale)} | "
                        f"{_interval(d.get('interval'), scale)} | {_num(d.get('mde'), scale)} | {d.get('verdict', '–')} |")
    return "\n".join(rows)


def study_report(summary: StudySummary) -> str:
    """The markdown for a study summary: arms, comparisons and verdicts (with their reasons)."""
    res = summary.results
    parts = [f"### {summary.study} ({summary.scale})", "", arms_table(res.get("arms", {})), ""]
    checks = [c for c in res if c not in ("arms", "matched_loss")]
    for check in checks:
        r = res[check]
        if not isinstance(r, Mapping) or "verdict" not in r:
            continue
        parts.append(f"**{check}** — {r.get('criterion', '')}: **{verdict_text(r)}**")
        if r.get("reason"):
            parts += ["", f"{r['reason']}"]
        if check == "A3" and "sa_vs_rs" in r:
            parts += ["", comparison_table("best-sa", {"best-rs": r["sa_vs_rs"], **r["sa_vs_controls"]})]
        elif check == "A3" and res.get("comparisons"):  # escape-a3: SA against each arm at equal loss
            parts += ["", comparison_table("sa", res["comparisons"])]
        if check == "A4" and res.get("batches"):  # escape-a4: between perturbation batches, per form of ρ and η′
            for title, key in (("", "comparisons"), (" at equal loss", "at_equal_loss")):
                for form, cmp in (res.get(key) or {}).items():
                    parts += ["", comparison_table(f"B ({form}){title}",
                                                   {f"B = {k.replace('-', ' − B = ')}": v for k, v in cmp.items()})]
        if check == "A4" and r.get("vs_rho0_twin"):
            parts += ["", comparison_table("sa-bB", {f"{k} vs its ρ = 0 twin": v for k, v in r["vs_rho0_twin"].items()})]
        if check == "G6" and r.get("vs_noiseless"):
            parts += ["", comparison_table("label-noise", {"noiseless": r["vs_noiseless"]})]
        parts.append("")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    """Print the report of each study summary named on the command line."""
    for path in argv if argv is not None else sys.argv[1:]:
        sys.stdout.write(study_report(read_study_summary(path)) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
