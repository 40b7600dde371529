"""Rank correlation of a measure with generalisation over a population of models (Jiang et al. 2019).

Pure functions on plain numbers (numpy and ``scipy.stats``):

* :func:`kendall_tau` — Kendall's τ_b of two sequences (``scipy.stats.kendalltau``), which corrects
  for ties: ``τ_b = (C − D) / √((C + D + T_x)(C + D + T_y))`` over the ``n(n−1)/2`` pairs;
  :func:`tau_rows` is the same, vectorised over the rows of resamples.
* :func:`bootstrap_tau` — a percentile bootstrap interval of τ, models resampled with replacement.
* :func:`tau_null` — the permutation null of τ (``y`` shuffled against ``x``): a two-sided p-value for
  "no correlation" and the critical ``|τ|`` at that level.
* :func:`tau_mde` — before running: the smallest ``|τ|`` that ``n`` models can tell from 0, the critical
  value of the null (detected half the time) and the normal-approximation MDE at a given power from the
  null's standard deviation ``√(2(2n+5) / (9n(n−1)))``.
* :func:`granulated_tau` — Jiang et al.'s granulated τ: for each hyperparameter axis, τ within every group
  of models equal in all *other* axes (groups of ≥ 2 models), averaged over groups; ``Ψ`` is the mean over
  axes.
* :func:`rank_measures` — all of it for a population of models given as plain per-model records (their
  hyperparameters, generalisation gap, test error and measures), and :func:`ranking_table` to print it.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

from sharpscope.errors import ConfigError
from sharpscope.measures.result import measure_value
from sharpscope.validation import check_int, check_real, check_seed

__all__ = ["bootstrap_tau", "granulated_tau", "kendall_tau", "measure_value", "rank_measures", "ranking_table",
           "tau_mde", "tau_null", "tau_rows"]


def _pair(x: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if a.ndim != 1 or a.shape != b.shape:
        raise ConfigError(f"x and y must be two 1-D sequences of one length, got shapes {a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ConfigError("x and y must be finite (drop the models whose measure failed first)")
    return a, b


def _tau(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return float(stats.kendalltau(a, b, variant="b").statistic)


def tau_rows(a: np.ndarray, b: np.ndarray, *, chunk: int = 256) -> np.ndarray:
    """τ_b of each row of ``a`` against the same row of ``b`` (both ``(R, n)``), vectorised for the
    resampling tests: ``Σ_{i<j} sgn(a_i − a_j) sgn(b_i − b_j) / √(n_a n_b)`` with ``n_a``, ``n_b`` the
    pairs untied in ``a`` and in ``b``; NaN where a row is constant. Equals :func:`kendall_tau` row by row."""
    iu = np.triu_indices(a.shape[1], 1)
    out = np.empty(len(a))
    for s in range(0, len(a), chunk):
        sa = np.sign(a[s:s + chunk, :, None] - a[s:s + chunk, None, :])[:, iu[0], iu[1]]
        sb = np.sign(b[s:s + chunk, :, None] - b[s:s + chunk, None, :])[:, iu[0], iu[1]]
        denom = np.sqrt(np.count_nonzero(sa, axis=1) * np.count_nonzero(sb, axis=1).astype(float))
        with np.errstate(invalid="ignore", divide="ignore"):
            out[s:s + chunk] = np.where(denom > 0, (sa * sb).sum(axis=1) / np.where(denom > 0, denom, 1), np.nan)
    return out


def _check_resampling(resamples: int, level: float, seed: int) -> None:
    """Validate the resampling arguments: at least 10 ``resamples``, a ``level`` in (0, 1), a ``seed``."""
    check_int("resamples", resamples, low=10)
    check_real("level", level, low=0.0, high=1.0, low_open=True, high_open=True)
    check_seed("seed", seed)


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's τ_b of ``x`` and ``y``; NaN with fewer than 2 values or when either is constant."""
    return _tau(*_pair(x, y))


def bootstrap_tau(x: Sequence[float], y: Sequence[float], *, resamples: int = 2000, level: float = 0.95,
                  seed: int = 0) -> dict[str, Any]:
    """τ_b with a percentile bootstrap interval: models resampled with replacement ``resamples`` times
    (seeded); resamples where τ is undefined (a constant resample) are dropped and counted."""
    a, b = _pair(x, y)
    _check_resampling(resamples, level, seed)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(resamples, len(a)))
    draws = tau_rows(a[idx], b[idx])
    kept = draws[np.isfinite(draws)]
    q = (1 - level) / 2
    low, high = (float(np.quantile(kept, q)), float(np.quantile(kept, 1 - q))) if len(kept) else (math.nan, math.nan)
    return {"tau": _tau(a, b), "low": low, "high": high, "level": level, "resamples": resamples,
            "undefined_resamples": int(len(draws) - len(kept)), "seed": seed, "n": len(a),
            "method": "percentile bootstrap over models"}


def tau_null(x: Sequence[float], y: Sequence[float], *, resamples: int = 2000, level: float = 0.95,
             seed: int = 0) -> dict[str, Any]:
    """The permutation test of "no correlation": τ_b of ``x`` against ``resamples`` shuffles of ``y``.

    ``p_value = (1 + #{|τ_perm| ≥ |τ|}) / (resamples + 1)`` (two-sided); ``critical`` is the ``level``
    quantile of ``|τ_perm|`` (an observed ``|τ|`` above it rejects at ``1 − level``); ``null_sd`` the
    spread of the null."""
    a, b = _pair(x, y)
    _check_resampling(resamples, level, seed)
    tau = _tau(a, b)
    rng = np.random.default_rng(seed)
    null = tau_rows(np.broadcast_to(a, (resamples, len(a))), rng.permuted(np.tile(b, (resamples, 1)), axis=1))
    null = null[np.isfinite(null)]
    if not math.isfinite(tau) or not len(null):
        return {"tau": tau, "p_value": math.nan, "critical": math.nan, "null_sd": math.nan, "level": level,
                "resamples": resamples, "seed": seed, "n": len(a), "method": "permutation"}
    extreme = int(np.sum(np.abs(null) >= abs(tau) - 1e-12))
    return {"tau": tau, "p_value": (1 + extreme) / (len(null) + 1), "critical": float(np.quantile(np.abs(null), level)),
            "null_sd": float(np.std(null, ddof=1)), "level": level, "resamples": resamples, "seed": seed,
            "n": len(a), "method": "permutation"}


def tau_mde(n: int, *, level: float = 0.95, power: float = 0.8, resamples: int = 4000, seed: int = 0) -> dict[str, Any]:
    """The smallest ``|τ|`` that ``n`` models (no ties) can tell from 0, computed before the study runs.

    ``critical``: the ``level`` quantile of ``|τ|`` under the permutation null (a true ``|τ|`` there is
    detected about half the time); ``mde``: ``(z_{(1+level)/2} + z_{power}) · sd_0`` with the null's
    standard deviation ``sd_0 = √(2(2n+5) / (9n(n−1)))`` (normal approximation). A measured ``|τ|``
    below ``critical`` is inconclusive, not evidence of no correlation."""
    check_int("n", n, low=3)
    check_real("power", power, low=0.0, high=1.0, low_open=True, high_open=True)
    ranks = [float(i) for i in range(n)]
    null = tau_null(ranks, ranks, resamples=resamples, level=level, seed=seed)
    sd0 = math.sqrt(2 * (2 * n + 5) / (9 * n * (n - 1)))
    z = float(stats.norm.ppf((1 + level) / 2) + stats.norm.ppf(power))
    return {"n": n, "critical": null["critical"], "null_sd": null["null_sd"], "null_sd_formula": sd0,
            "mde": min(1.0, z * sd0), "level": level, "power": power, "resamples": resamples, "seed": seed}


def granulated_tau(values: Sequence[float], gaps: Sequence[float], configs: Sequence[Mapping[str, Hashable]],
                   axes: Sequence[str]) -> dict[str, Any]:
    """Jiang et al.'s granulated Kendall τ of a measure (``values``) with ``gaps`` over models ``configs``.

    For each axis ``a`` of ``axes``, models are grouped by their values on every other axis; in each
    group of at least 2 models ``τ_b`` of values against gaps is taken, and ``ψ_a`` is the mean over the
    groups where τ is defined (a group whose measure or gap is constant is skipped and counted).
    ``Ψ`` is the mean of ``ψ_a`` over the axes where it is defined."""
    a, b = _pair(values, gaps)
    if len(configs) != len(a):
        raise ConfigError(f"configs has {len(configs)} entries for {len(a)} values")
    names = list(axes)
    missing = sorted({ax for c in configs for ax in names if ax not in c})
    if not names or missing:
        raise ConfigError(f"axes must be non-empty keys of every config; missing {missing}" if missing else
                          "axes must name at least one hyperparameter")
    out: dict[str, Any] = {}
    for axis in names:
        groups: dict[tuple[Hashable, ...], list[int]] = {}
        for i, c in enumerate(configs):
            groups.setdefault(tuple(c[o] for o in names if o != axis), []).append(i)
        taus = [_tau(a[idx], b[idx]) for idx in groups.values() if len(idx) >= 2]
        defined = [t for t in taus if math.isfinite(t)]
        out[axis] = {"tau": float(np.mean(defined)) if defined else math.nan, "groups": len(defined),
                     "undefined_groups": len(taus) - len(defined), "taus": defined}
    psis = [v["tau"] for v in out.values() if math.isfinite(v["tau"])]
    return {"axes": out, "psi": float(np.mean(psis)) if psis else math.nan}


# ---------------------------------------------------------------------------------- a population
#: What a per-model record of :func:`rank_measures` must hold.
RECORD_KEYS = ("axes", "gap_acc", "test_error", "measures")


def _check_records(records: Sequence[Mapping[str, Any]]) -> None:
    if isinstance(records, (str, bytes, Mapping)) or not all(isinstance(r, Mapping) for r in records):
        raise ConfigError("records must be a list of dicts, one per model")
    for i, r in enumerate(records):
        missing = [k for k in RECORD_KEYS if k not in r]
        if missing:
            raise ConfigError(f"record {i} lacks {', '.join(missing)} (each needs {', '.join(RECORD_KEYS)})")
        if not isinstance(r["axes"], Mapping) or not isinstance(r["measures"], Mapping):
            raise ConfigError(f"record {i}: axes and measures must be dicts (hyperparameter -> value, "
                              "measure -> number)")
        for key in ("axes", "measures"):
            if set(r[key]) != set(records[0][key]):
                raise ConfigError(f"record {i} has {key} {sorted(r[key])}, record 0 has {sorted(records[0][key])}")
        for key in ("gap_acc", "test_error"):
            value = r[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"record {i}: {key} must be a finite number, got {value!r}")


def rank_measures(records: Sequence[Mapping[str, Any]], *, axes: Sequence[str] | None = None,
                  resamples: int = 2000, level: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """How well each measure ranks a population of models by generalisation.

    ``records``: one dict per model with ``axes`` (its hyperparameters, name → value), ``gap_acc`` (the
    generalisation gap, train − test accuracy), ``test_error`` and ``measures`` (name → a number, a dict
    with ``value`` or a :class:`~sharpscope.measures.SharpnessResult`); every record names the same
    hyperparameters and measures. ``axes``: the hyperparameters of the granulated τ (default: all).

    Returns ``n``, ``axes``, ``level``; ``mde`` (:func:`tau_mde` for ``n`` models: the smallest detectable ``|τ|``; None below
    3 models, and then no measure is ranked); and for each measure, against the gap and against the test
    error, τ_b with its percentile bootstrap interval (:func:`bootstrap_tau`), the permutation p-value
    (:func:`tau_null`) and a verdict: ``positive``/``negative`` when ``|τ|`` is above the critical value
    and ``p < 1 − level``, else ``inconclusive`` (``undefined`` when a measure is constant); plus
    ``granulated`` (:func:`granulated_tau` against the gap). A measure with a non-finite value for some
    model gets ``{"error": ...}`` instead.

    Example::

        >>> recs = [{"axes": {"lr": lr, "width": w}, "gap_acc": 0.01 * i, "test_error": 0.1 + 0.01 * i,
        ...          "measures": {"sharp": float(i)}} for i, (lr, w) in enumerate([(1, 1), (1, 2), (2, 1), (2, 2)])]
        >>> rank_measures(recs, resamples=100)["measures"]["sharp"]["gap"]["tau"]
        1.0
    """
    _check_records(records)
    names = list(axes) if axes is not None else list(records[0]["axes"]) if records else []
    if records:
        unknown = [a for a in names if a not in records[0]["axes"]]
        if unknown or not names:
            raise ConfigError(f"axes must name hyperparameters of the records ({', '.join(records[0]['axes'])}); "
                              f"got {', '.join(map(repr, unknown)) if unknown else 'none'}")
    _check_resampling(resamples, level, seed)
    first = records[0]["measures"] if records else {}
    measures = {name: [measure_value(r["measures"][name], name) for r in records] for name in first}
    n = len(records)
    out: dict[str, Any] = {"n": n, "axes": names, "level": level, "measures": {},
                           "mde": tau_mde(n, level=level, resamples=resamples, seed=seed) if n >= 3 else None}
    if n < 3:
        return out
    critical = out["mde"]["critical"]
    gap = [float(r["gap_acc"]) for r in records]
    err = [float(r["test_error"]) for r in records]
    for name, values in measures.items():
        if not all(math.isfinite(v) for v in values):
            out["measures"][name] = {"error": "a model's value is not finite"}
            continue
        row: dict[str, Any] = {}
        for target, ys in (("gap", gap), ("test_error", err)):
            boot = bootstrap_tau(values, ys, resamples=resamples, level=level, seed=seed)
            null = tau_null(values, ys, resamples=resamples, level=level, seed=seed)
            tau = boot["tau"]
            verdict = ("undefined" if not math.isfinite(tau) else
                       "inconclusive" if abs(tau) < critical or null["p_value"] >= 1 - level else
                       "positive" if tau > 0 else "negative")
            row[target] = {"tau": tau, "interval": [boot["low"], boot["high"]], "p_value": null["p_value"],
                           "verdict": verdict}
        row["granulated"] = granulated_tau(values, gap, [r["axes"] for r in records], names)
        out["measures"][name] = row
    return out


def ranking_table(ranked: Mapping[str, Any], excluded: Sequence[str] = ()) -> str:
    """:func:`rank_measures`' result as a Markdown table, headed by the smallest detectable ``|τ|``;
    ``excluded``: the models left out (named in the head)."""
    mde = ranked.get("mde")
    head = [f"Models ranked: {ranked['n']}; excluded (stop not reached or diverged): {len(excluded)}"
            + (f" ({', '.join(excluded)})" if excluded else "") + "."]
    if mde is not None:
        head.append(f"Smallest detectable |τ| with {mde['n']} models: {mde['critical']:.3f} (permutation critical value, "
                    f"{mde['level']:.0%}); {mde['mde']:.3f} at {mde['power']:.0%} power. A |τ| below it is "
                    "inconclusive, not 'no correlation'.")
    ci = f"{ranked.get('level', 0.95):.0%} CI"
    rows = [f"| measure | τ gap [{ci}] | p | τ test error [{ci}] | p | Ψ (granulated, gap) | verdict (gap) |",
            "|---|---|---|---|---|---|---|"]
    for name, r in ranked.get("measures", {}).items():
        if "error" in r:
            rows.append(f"| {name} | {r['error']} | | | | | |")
            continue
        g, e = r["gap"], r["test_error"]
        rows.append(f"| {name} | {g['tau']:+.3f} [{g['interval'][0]:+.2f}, {g['interval'][1]:+.2f}] | {g['p_value']:.3f} "
                    f"| {e['tau']:+.3f} [{e['interval'][0]:+.2f}, {e['interval'][1]:+.2f}] | {e['p_value']:.3f} "
                    f"| {r['granulated']['psi']:+.3f} | {g['verdict']} |")
    return "\n".join(head) + "\n\n" + "\n".join(rows) + "\n"
