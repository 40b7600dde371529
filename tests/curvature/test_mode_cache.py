"""Product-mode choices kept on disk between processes, how every choice is recorded, and the probe's loss and
gradient taken from the cached gradient graphs."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from sharpscope import HessianOperator, Objective
from sharpscope.curvature.operators import mode_cache
from sharpscope.probe import ProbeSettings, probe

hessian_module = importlib.import_module("sharpscope.curvature.operators.hessian")


@pytest.fixture(autouse=True)
def new_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing remembered in this process: what a fresh one would see."""
    monkeypatch.setattr(hessian_module, "_TIMED_CHOICES", {})


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()


def data(n: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(n)
    return torch.randn(n, 5, generator=gen, dtype=torch.float64), torch.randint(0, 3, (n,), generator=gen)


def single_record(model: nn.Module | None = None) -> dict[str, object]:
    op = HessianOperator(Objective(model or mlp(), nn.CrossEntropyLoss(), data(), batch_size=10), cache_graphs=False)
    op.matvec(torch.ones(op.dim, dtype=torch.float64))
    return op.describe()["mode_selection"]["probes=1"]  # type: ignore[index]


def test_a_new_process_reads_the_timed_choice_from_disk_and_records_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    first = single_record()
    assert first["how"] == "timed" and set(first["trial_seconds_per_probe"]) == {"fwd-rev", "rev-rev"}  # type: ignore[arg-type]
    path = Path(str(first["cache_file"]))
    assert path.is_file() and path.parent.parent == Path(str(mode_cache.cache_dir())).parent
    monkeypatch.setattr(hessian_module, "_TIMED_CHOICES", {})  # a new process
    again = single_record()
    assert again["how"] == "timed in an earlier process, read from the on-disk cache"
    assert again["chosen"] == first["chosen"] and again["cache_file"] == str(path) and again["remembered"] is True
    assert again["trial_seconds_per_probe"] == first["trial_seconds_per_probe"]
    assert again["cache_version"] == mode_cache.version_key(torch.device("cpu"))
    third = single_record()  # same process: remembered in memory, nothing read
    assert third["how"] == "timed earlier in this process" and third["chosen"] == first["chosen"]


def test_a_new_version_key_ignores_the_stored_choice_and_times_again(monkeypatch: pytest.MonkeyPatch) -> None:
    first = single_record()
    monkeypatch.setattr(hessian_module, "_TIMED_CHOICES", {})
    monkeypatch.setattr(mode_cache, "MODE_CACHE_VERSION", mode_cache.MODE_CACHE_VERSION + 1)
    again = single_record()
    assert again["how"] == "timed" and again["cache_file"] != first["cache_file"]


def test_a_stale_entry_under_the_same_name_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    first = single_record()
    path = Path(str(first["cache_file"]))
    stored = json.loads(path.read_text())
    stored["version"] = "mode-cache 0; an older torch"
    stored["record"]["chosen"] = "fwd-rev" if first["chosen"] == "rev-rev" else "rev-rev"
    path.write_text(json.dumps(stored))
    monkeypatch.setattr(hessian_module, "_TIMED_CHOICES", {})
    again = single_record()
    assert again["how"] == "timed"
    assert json.loads(path.read_text())["version"] == mode_cache.version_key(torch.device("cpu"))  # overwritten


def test_an_unreadable_entry_is_timed_again_and_rewritten_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    path = Path(str(single_record()["cache_file"]))
    path.write_text('{"version": "mode-cache')  # a torn write (what the atomic rename prevents)
    monkeypatch.setattr(hessian_module, "_TIMED_CHOICES", {})
    assert single_record()["how"] == "timed"
    assert json.loads(path.read_text())["record"]["how"] == "timed"
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".tmp-")] == []


def test_the_cache_can_be_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(mode_cache.CACHE_ENV, "off")
    first = single_record()
    assert first["how"] == "timed" and str(first["cache_file"]).startswith("not stored")
    monkeypatch.setattr(hessian_module, "_TIMED_CHOICES", {})
    assert single_record()["how"] == "timed"


def test_other_architecture_gets_its_own_entry() -> None:
    first = single_record()
    torch.manual_seed(1)
    wider = nn.Sequential(nn.Linear(5, 9), nn.Tanh(), nn.Linear(9, 3)).double()
    other = single_record(wider)
    assert other["how"] == "timed" and other["cache_file"] != first["cache_file"]


def test_the_graph_cache_decides_the_mode_without_timing() -> None:
    op = HessianOperator(Objective(mlp(), nn.CrossEntropyLoss(), data(), batch_size=10), cache_graphs="auto")
    op.matvec(torch.ones(op.dim, dtype=torch.float64))
    selection = op.describe()["mode_selection"]
    assert selection["mode"]["how"] == "decided from architecture" and selection["mode"]["chosen"] == "rev-rev"  # type: ignore[index]
    assert not any(k.startswith("probes=") for k in selection)  # type: ignore[union-attr]


@pytest.mark.parametrize("loss_fn", [nn.CrossEntropyLoss(), nn.MSELoss()])
def test_loss_and_gradient_from_the_cached_graphs_equal_separate_passes(loss_fn: nn.Module) -> None:
    x, y = data(23)
    target = y if isinstance(loss_fn, nn.CrossEntropyLoss) else torch.randn(23, 3, dtype=torch.float64)
    objective = Objective(mlp(), loss_fn, (x, target), batch_size=10)  # batches of 10, 10 and 3
    op = HessianOperator(objective, cache_graphs=True)
    loss, gradient, how = op.loss_and_gradient()
    assert how == "from the cached gradient graphs (no extra pass)"
    assert loss == pytest.approx(objective.loss(), rel=1e-13)
    torch.testing.assert_close(gradient, objective.gradient(), rtol=1e-12, atol=1e-14)
    uncached = HessianOperator(objective, cache_graphs=False)
    assert uncached.loss_and_gradient()[2] == "separate forward and backward passes"


def test_a_linear_parameter_still_has_its_gradient() -> None:
    """A bias whose loss is linear in it has a gradient but no double-backward graph: it is still counted."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 3), nn.Tanh(), nn.Linear(3, 1)).double()  # loss linear in the last bias
    x, _ = data(12)
    objective = Objective(model, lambda out, t: (out * t).mean(), (x, torch.randn(12, 1, dtype=torch.float64)))
    op = HessianOperator(objective, cache_graphs=True)
    _, gradient, _ = op.loss_and_gradient()
    torch.testing.assert_close(gradient, objective.gradient())
    assert float(gradient.abs().sum()) > 0


def test_probe_records_how_loss_and_gradient_were_taken() -> None:
    x, y = data(40)
    report = probe(mlp(), nn.CrossEntropyLoss(), x, y, ProbeSettings(batch_size=16))
    assert report.settings["loss_and_gradient"] == "from the cached gradient graphs (no extra pass)"
    objective = Objective(mlp(), nn.CrossEntropyLoss(), (x, y), batch_size=16)
    assert report.loss == pytest.approx(objective.loss(), rel=1e-13)
    assert report.grad_norm == pytest.approx(float(objective.gradient().norm()), rel=1e-12)
    assert report.settings["mode_selection"]["mode"]["how"] == "decided from architecture"  # type: ignore[index]
    plain = probe(mlp(), nn.CrossEntropyLoss(), x, y,
                  ProbeSettings(curvature=ProbeSettings().curvature.replace(cache_graphs=False), batch_size=16))
    assert plain.settings["loss_and_gradient"] == "separate forward and backward passes"
    assert plain.settings["mode_selection"]["probes=1"]["how"] == "timed"  # type: ignore[index]
    assert plain.loss == report.loss


def test_concurrent_writers_leave_one_whole_entry() -> None:
    """Threads storing the same key at once (as processes timing one architecture together would): every
    read sees a whole record, and no temporary file is left behind."""
    import threading

    key = ("an architecture", 1)
    device = torch.device("cpu")
    errors: list[BaseException] = []

    def write(i: int) -> None:
        try:
            for _ in range(20):
                mode_cache.store(key, device, {"chosen": "rev-rev", "writer": i})
                record, _ = mode_cache.load(key, device)
                assert record is not None and record["chosen"] == "rev-rev"
        except BaseException as err:  # noqa: BLE001 (reported below)
            errors.append(err)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    folder = mode_cache.cache_dir()
    assert folder is not None and [p.name for p in folder.iterdir() if p.name.startswith(".tmp-")] == []
    assert len(list(folder.glob("*.json"))) == 1


def test_an_unwritable_cache_folder_leaves_the_choice_timed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(mode_cache.CACHE_ENV, str(blocker))
    record = single_record()
    assert record["how"] == "timed" and str(record["cache_file"]).startswith("not stored")


def record_for(model: nn.Module, n: int, batch_size: int | None = None) -> dict[str, object]:
    gen = torch.Generator().manual_seed(n)
    x, y = torch.randn(n, 5, generator=gen, dtype=torch.float64), torch.randint(0, 3, (n,), generator=gen)
    op = HessianOperator(Objective(model, nn.CrossEntropyLoss(), (x, y), batch_size=batch_size), cache_graphs=False)
    op.matvec(torch.ones(op.dim, dtype=torch.float64))
    return op.describe()["mode_selection"]["probes=1"]  # type: ignore[index,return-value]


@pytest.mark.parametrize("n, examples", [(40, 40), (300, hessian_module.TRIAL_EXAMPLES)])
def test_cpu_trials_run_on_at_most_trial_examples_of_the_first_batch(n: int, examples: int) -> None:
    record = record_for(mlp(), n)
    assert record["how"] == "timed" and record["trial_examples"] == examples and record["failed"] == {}
    assert str(hessian_module.TRIAL_EXAMPLES) in str(record["trial_rule"])


class FixedBatch(nn.Module):
    """A model that runs on batches of exactly ``n`` rows (a reshape fixed to the batch size)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n, self.inner = n, mlp()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.reshape(self.n, 5))


@pytest.mark.filterwarnings("ignore::sharpscope.curvature.operators.objective.ReductionWarning")
def test_a_slice_that_fails_falls_back_to_the_whole_first_batch() -> None:
    record = record_for(FixedBatch(300), 300)
    assert record["trial_examples"] == 300 and record["failed"] == {}
    assert set(record["trial_seconds_per_probe"]) == {"fwd-rev", "rev-rev"}  # type: ignore[arg-type]
