"""The registry's contract: seeds, JSON, restored weights, clear errors before any work."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from sharpscope.curvature import Objective
from sharpscope.errors import ConfigError, ObjectiveError
from sharpscope.measures import MEASURES, SharpnessResult, SharpnessSettings, check_measure_names, measure
from sharpscope.measures.perturbed import Counter
from tests.measures.models import relu_net


def _objective(n: int = 16) -> Objective:
    model, x, y = relu_net(5, n=n)
    return Objective(model, nn.CrossEntropyLoss(), (x, y))


@pytest.mark.parametrize("name", sorted(MEASURES))
def test_every_measure_is_seeded_serialisable_and_leaves_the_weights(name: str, single_thread: None) -> None:
    objective = _objective()
    before = {k: v.clone() for k, v in objective.model.state_dict().items()}
    settings = SharpnessSettings(steps=5, samples=4, tol=0.1, seed=3)
    first, second = measure(name, objective, settings), measure(name, objective, settings)
    assert isinstance(first, SharpnessResult) and first.value == second.value
    assert all(torch.equal(before[k], v) for k, v in objective.model.state_dict().items())
    record = json.loads(json.dumps(first.to_dict()))
    assert record["name"] == name and record["forwards"] > 0 and record["seconds"] >= 0
    assert record["settings"]["dim"] == objective.dim


def test_another_seed_gives_other_draws(single_thread: None) -> None:
    objective = _objective()
    values = {measure("average", objective, SharpnessSettings(samples=4, seed=s)).value for s in (0, 1)}
    assert len(values) == 2


def test_weights_are_restored_when_a_measure_raises(single_thread: None) -> None:
    model, x, y = relu_net(6)
    calls = {"n": 0}

    def loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] > 5:
            raise RuntimeError("boom")
        return nn.functional.cross_entropy(out, target)

    objective = Objective(model, loss, (x, y), validate=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(Exception, match="boom"):
        measure("worst", objective, SharpnessSettings(steps=10))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_model_that_writes_its_own_weights_is_put_back(single_thread: None) -> None:
    class Drifting(nn.Module):
        """Writes into its weight on every forward (as a buggy hook might)."""

        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 3).double()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                self.fc.bias.add_(1.0)
            return self.fc(x)

    model = Drifting()
    _, x, y = relu_net(7)
    objective = Objective(model, nn.CrossEntropyLoss(), (x, y), validate=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    unguarded = MEASURES["jacobian"](objective, SharpnessSettings(), Counter())
    assert not torch.equal(model.fc.bias, before["fc.bias"])  # the model did write into itself
    model.load_state_dict(before)
    guarded = measure("jacobian", objective)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert guarded.value == unguarded[0]


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"rho": 0.0}, "rho must be > 0.0"),
    ({"rho": float("nan")}, "rho must be finite"),
    ({"norm": "l1"}, "norm must be 'l2' or 'linf'"),
    ({"m": 0}, "m must be a positive integer"),
    ({"steps": 0}, "steps must be"),
    ({"samples": 1}, "samples must be"),
    ({"adaptive": 1}, "adaptive must be true or false"),
    ({"target": -1.0}, "target must be > 0.0"),
    ({"trace": "lanczos"}, "trace must be"),
    ({"trace": "hutch++", "matvecs": 5}, "Hutch++ needs matvecs >= 6"),
])
def test_bad_settings_fail_with_one_line(kwargs: dict[str, object], words: str) -> None:
    with pytest.raises(ConfigError, match=words.replace("+", r"\+")) as info:
        SharpnessSettings(**kwargs)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


def test_bad_calls_fail_before_any_work() -> None:
    objective = _objective()
    with pytest.raises(ConfigError, match="name must name measures among worst, average, .*; got unknown 'sharp'"):
        measure("sharp", objective)
    with pytest.raises(ConfigError, match="objective must be an Objective"):
        measure("worst", "model")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="m applies to worst and average sharpness, not to 'keskar'"):
        measure("keskar", objective, SharpnessSettings(m=4))
    with pytest.raises(ConfigError, match="m=99 exceeds every probe batch"):
        measure("worst", objective, SharpnessSettings(m=99))
    with pytest.raises(ConfigError, match="names names worst twice"):
        check_measure_names("worst,worst")
    assert check_measure_names(" worst,ggn") == ("worst", "ggn")


def test_a_perturbation_that_overflows_the_loss_is_named() -> None:
    class Exploding(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.tensor([1.0], dtype=torch.float64))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.exp(100 * self.w) * x

    x = torch.ones(4, 1, dtype=torch.float64)
    objective = Objective(Exploding(), nn.MSELoss(), (x, x))
    with pytest.raises(ObjectiveError, match="the loss is inf at a perturbed point: the perturbation is too large"):
        measure("average", objective, SharpnessSettings(rho=20.0, samples=2))


@pytest.mark.parametrize("name", ["worst", "average", "pacbayes", "ggn"])
def test_a_streamed_probe_set_gives_the_in_memory_answer(name: str, single_thread: None) -> None:
    model, x, y = relu_net(8, n=20)
    settings = SharpnessSettings(steps=5, samples=4, tol=0.1)
    kept = measure(name, Objective(model, nn.CrossEntropyLoss(), (x, y), batch_size=8, stream=False), settings)
    streamed = measure(name, Objective(model, nn.CrossEntropyLoss(), (x, y), batch_size=8, stream=True), settings)
    assert streamed.value == pytest.approx(kept.value, rel=1e-12)


#: Another valid value of each field of SharpnessSettings.
OTHER = {"rho": 0.2, "norm": "linf", "adaptive": True, "m": 4, "steps": 7, "restarts": 2, "samples": 6, "seed": 9,
         "target": 0.3, "tol": 0.2, "epsilon": 0.01, "trace": "hutchinson", "matvecs": 10, "block": 3}


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")  # torch's forward-mode set-up
@pytest.mark.parametrize("name", sorted(MEASURES))
def test_each_measure_reads_exactly_the_fields_it_records(name: str, single_thread: None) -> None:
    from dataclasses import fields, replace

    from sharpscope.measures.settings import FIELDS_USED, used_by

    assert set(OTHER) == {f.name for f in fields(SharpnessSettings)}
    assert all(used_by(f) for f in OTHER)  # every field is read by some measure
    objective = _objective()
    base = SharpnessSettings(steps=3, samples=4, tol=0.1, trace="hutchinson", matvecs=6)
    result = measure(name, objective, base)
    assert set(result.settings) - {"dim", "probe_examples"} == set(FIELDS_USED[name])
    for field, value in OTHER.items():
        if field in FIELDS_USED[name] or field == "m":  # m is refused by the measures that do not take it
            continue
        other = measure(name, objective, replace(base, **{field: value}))
        assert other.value == result.value, f"{name} changed with {field}, which it does not record"
    if name in ("jacobian", "ggn"):  # the exact trace draws nothing: no seed, no products to count
        exact = measure(name, objective, replace(base, trace="exact"))
        assert set(exact.settings) - {"dim", "probe_examples"} == {"trace", "block"}
        assert measure(name, objective, replace(base, trace="exact", seed=9, matvecs=10)).value == exact.value
