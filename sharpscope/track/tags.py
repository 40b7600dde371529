"""Chart names for the records a run writes: the scalars TensorBoard and W&B plot, and the constants they show once;
and the flattened record (:func:`flatten_record`: nested keys joined by dots) the CSV sink and data frames hold.

A measurement record holds a few quantities that change along training and many that do not (the
probe size, the parameter count, the seed, the step size). Charts get the first kind under names a
reader looks for; the second kind is shown once, as a table (:func:`record_constants`).

=====================================  ===========================================
record key                             chart
=====================================  ===========================================
``eigenvalues[0]``, ``[i]``            ``sharpness/lambda_max``, ``sharpness/lambda_{i+1}``
``thresholds.edge``                    ``sharpness/edge`` (the optimizer's own threshold; Adam's edge,
                                       which bounds λ_max(P⁻¹H), is ``sharpness/preconditioned_edge``)
``thresholds.gd_edge``                 ``sharpness/gd_edge`` (2/η; only where the edge is another rule)
``preconditioned_eigenvalues[0]``      ``sharpness/preconditioned_lambda_max`` (``..._lambda_{i+1}``)
``trace.estimate``, ``.stderr``        ``trace``, ``trace/stderr``, ``trace/per_param``
``train_loss``, ``test_loss``          ``loss/train``, ``loss/test``
``train_acc``, ``test_acc``            ``accuracy/train``, ``accuracy/test``
``grad_norm``                          ``grad_norm``
``residuals[0]``, ``converged``        ``lanczos/residual``, ``lanczos/converged`` (0/1)
``cost.hvps``, ``cost.seconds``        ``cost/hvps``, ``cost/seconds``
``alignment.grad_cos[i]``, ...         ``alignment/grad_cos_{i+1}``, ``alignment/grad_fraction``
=====================================  ===========================================

An ``alignment`` record gives ``alignment/update_norm``, ``alignment/update_fraction`` and
``alignment/update_cos_{i+1}``; a ``sam_batch`` record ``sam_batch/grad_norm``, ``sam_batch/edge``
and ``sam_batch/lambda_max``; an ``update_curvature`` record ``sharpness/kappa_u`` (``uᵀHu/‖u‖²``),
``sharpness/preconditioned_kappa_u`` (``uᵀHu/uᵀPu``, Adam), ``update_curvature/update_norm``,
``update_curvature/hvps`` and ``update_curvature/forwards``; a ``diverged`` record ``diverged`` = 1. Records of any other kind
keep every number under ``kind/key`` (keys flattened by :func:`flatten_record`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from sharpscope.errors import ConfigError
from sharpscope.io import jsonsafe
from sharpscope.io.records import (
    Alignment,
    Divergence,
    Measurement,
    RunRecord,
    SamBatch,
    UpdateReading,
    stored_record,
    typed_record,
)

#: What a sink takes: a typed record or its stored form.
AnyRecord = RunRecord | Mapping[str, Any]


def flatten_record(record: AnyRecord) -> dict[str, Any]:
    """One level of ``key: value`` with JSON-safe scalar values (nested keys joined by dots, list entries indexed).

    Empty lists and dicts are kept as their JSON text (``"[]"``, ``"{}"``), so no key is lost.
    """
    out: dict[str, Any] = {}

    def walk(value: Any, key: str) -> None:
        if isinstance(value, Mapping) and value:
            for k, v in value.items():
                walk(v, f"{key}.{k}" if key else str(k))
        elif isinstance(value, list) and value:
            for i, v in enumerate(value):
                walk(v, f"{key}.{i}")
        elif isinstance(value, (Mapping, list)):
            out[key] = jsonsafe.dumps(value)
        else:
            out[key] = value

    walk(jsonsafe.to_jsonable(stored_record(record)), "")
    return out


def record_scalars(record: AnyRecord) -> tuple[str, int, dict[str, float]]:
    """``(kind, step, {key: number})`` of a record, for the sinks that store numbers only."""
    flat = flatten_record(record)
    kind, step = str(flat.pop("kind", "metrics")), flat.pop("step", None)
    if not isinstance(step, int) or isinstance(step, bool):
        raise ConfigError(f"a record needs an integer 'step', got {step!r}")
    return kind, step, numbers_of(flat.items())


#: The chart pairs a custom-scalars layout overlays: λ_max with the threshold that bounds it.
OVERLAYS: dict[str, list[str]] = {
    "λ_max and its edge": ["sharpness/lambda_max", "sharpness/edge", "sharpness/gd_edge"],
    "preconditioned λ_max and its edge": ["sharpness/preconditioned_lambda_max", "sharpness/preconditioned_edge"],
    "loss": ["loss/train", "loss/test"],
    "accuracy": ["accuracy/train", "accuracy/test"],
}


def _number(value: Any) -> float | None:
    """A record value as a float (booleans as 0/1, the stored ``"NaN"``/``"Infinity"`` strings decoded); None otherwise."""
    if isinstance(value, (bool, int, float)):
        return float(value)
    return jsonsafe.NONFINITE.get(value) if isinstance(value, str) else None


def numbers_of(pairs: Iterable[tuple[str, Any]]) -> dict[str, float]:
    """``{key: number}`` of the ``(key, value)`` pairs whose value is a number (:func:`_number`), in order."""
    return {tag: number for tag, value in pairs if (number := _number(value)) is not None}


def _listed(values: Sequence[Any] | None, first: str, other: str) -> list[tuple[str, Any]]:
    """``values[0]`` as ``first``, ``values[i]`` as ``other.format(i + 1)``."""
    if not isinstance(values, (list, tuple)):
        return []
    return [(first if i == 0 else other.format(i + 1), value) for i, value in enumerate(values)]


def _measurement(m: Measurement) -> dict[str, float]:
    preconditioned = m.threshold_rule == "adam_edge"  # Adam's edge bounds λ_max(P⁻¹H), not λ_max(H)
    return numbers_of([
        *_listed(m.eigenvalues, "sharpness/lambda_max", "sharpness/lambda_{}"),
        *_listed(m.preconditioned_eigenvalues, "sharpness/preconditioned_lambda_max",
                 "sharpness/preconditioned_lambda_{}"),
        ("sharpness/preconditioned_edge" if preconditioned else "sharpness/edge", m.edge),
        ("sharpness/gd_edge", m.gd_edge if m.threshold_rule not in (None, "gd_edge") else None),
        ("trace", m.trace_estimate), ("trace/stderr", m.trace_stderr), ("trace/per_param", m.trace_per_param),
        ("loss/train", m.train_loss), ("loss/test", m.test_loss), ("accuracy/train", m.train_acc),
        ("accuracy/test", m.test_acc), ("grad_norm", m.grad_norm), ("lanczos/converged", m.converged),
        ("lanczos/residual", m.residuals[0] if m.residuals else None),
        ("cost/hvps", m.cost_hvps), ("cost/seconds", m.cost_seconds), ("alignment/grad_fraction", m.grad_fraction),
        *_listed(m.grad_cos, "alignment/grad_cos_1", "alignment/grad_cos_{}"),
    ])


def _alignment(a: Alignment) -> dict[str, float]:
    return numbers_of([("alignment/update_norm", a.update_norm), ("alignment/update_fraction", a.update_fraction),
                       *_listed(a.update_cos, "alignment/update_cos_1", "alignment/update_cos_{}")])


def _sam_batch(b: SamBatch) -> dict[str, float]:
    return numbers_of([("sam_batch/grad_norm", b.batch_grad_norm), ("sam_batch/edge", b.sam_edge_batch),
                       ("sam_batch/lambda_max", b.batch_lambda_max)])


def _update_curvature(u: UpdateReading) -> dict[str, float]:
    costed = u.cost is not None
    return numbers_of([("sharpness/kappa_u", u.kappa), ("sharpness/preconditioned_kappa_u", u.kappa_preconditioned),
                       ("update_curvature/update_norm", u.update_norm),
                       ("update_curvature/hvps", u.hvps if costed else None),
                       ("update_curvature/forwards", u.forwards if costed else None)])


#: The charts of each typed record.
_CHARTS: dict[type, Callable[[Any], dict[str, float]]] = {
    Measurement: _measurement, Alignment: _alignment, SamBatch: _sam_batch, UpdateReading: _update_curvature,
    Divergence: lambda _: {"diverged": 1.0}}


def readable_scalars(record: AnyRecord) -> dict[str, float]:
    """``{chart name: number}`` of one record, typed or stored (the table in the module docstring).

    >>> readable_scalars({"kind": "measurement", "step": 0, "eigenvalues": [9.0], "preconditioned_eigenvalues": [300.0],
    ...                   "thresholds": {"rule": "adam_edge", "edge": 380.0, "gd_edge": 200.0}})
    {'sharpness/lambda_max': 9.0, 'sharpness/preconditioned_lambda_max': 300.0, 'sharpness/preconditioned_edge': 380.0, 'sharpness/gd_edge': 200.0}

    >>> readable_scalars({"kind": "measurement", "step": 3, "eigenvalues": [4.0, 1.0], "train_loss": 0.5,
    ...                   "thresholds": {"rule": "gd_edge", "edge": 40.0, "gd_edge": 40.0, "lr": 0.05}})
    {'sharpness/lambda_max': 4.0, 'sharpness/lambda_2': 1.0, 'sharpness/edge': 40.0, 'loss/train': 0.5}
    """
    typed = typed_record(record)
    if typed is not None:
        return _CHARTS[type(typed)](typed)
    kind, _, numbers = record_scalars(record)
    return {f"{kind}/{key}": value for key, value in numbers.items()}


def record_constants(record: AnyRecord) -> dict[str, Any]:
    """What a measurement records that does not change along a run, flattened: ``settings.*`` (probe size,
    BN mode, dimension, seed, ...) and the thresholds' rule and hyperparameters (``thresholds.lr``, ...)
    other than the edges themselves. Empty for records of other kinds."""
    typed = typed_record(record)
    if not isinstance(typed, Measurement):
        return {}
    thresholds = {k: v for k, v in (typed.thresholds or {}).items()
                  if k not in ("edge", "gd_edge", "sam_edge", "sam_edge_indicative", "momentum_edge",
                               "ema_momentum_edge", "adam_edge")}
    parts = {"settings": typed.settings, "thresholds": thresholds}
    return flatten_record({key: value for key, value in parts.items() if value})


def constants_table(constants: Mapping[str, Any]) -> str:
    """A Markdown table ``| key | value |`` of ``constants`` (how TensorBoard's text panel shows them)."""
    return "\n".join(["| key | value |", "|---|---|", *(f"| {key} | {value} |" for key, value in constants.items())])


def hparam_values(constants: Mapping[str, Any]) -> dict[str, bool | int | float | str]:
    """``constants`` as TensorBoard hparams accept them: numbers, booleans and strings (anything else as its text)."""
    return {k: v if isinstance(v, (bool, int, float, str)) else jsonsafe.dumps(v) for k, v in constants.items()}
