"""Slices against exact answers: the parabola along the top eigenvector of a quadratic, the closed-form
2-D grid of a linear model, vmap against the loop (BatchNorm in batch mode), save/load, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from sharpscope import Objective
from sharpscope.errors import ConfigError, DataError, ObjectiveError
from sharpscope.landscape import (
    Directions,
    SliceResult,
    eigen_directions,
    evaluate_points,
    random_directions,
    slice_1d,
    slice_2d,
)
from sharpscope.losses import cross_entropy, mse
from sharpscope.models import build_model

pytestmark = pytest.mark.usefixtures("single_thread")
F64 = torch.float64


def least_squares_at_minimum(seed: int = 0) -> tuple[Objective, Tensor, float]:
    """``½ mean (w·x − y)²`` at its minimizer: the Hessian is ``XᵀX/N``, the gradient zero."""
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(30, 4, generator=gen, dtype=F64)
    y = X @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]], dtype=F64) + 0.3 * torch.randn(30, 1, generator=gen, dtype=F64)
    model = nn.Linear(4, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.linalg.lstsq(X, y).solution.T)
    H = X.T @ X / 30
    return Objective(model, mse, (X, y), batch_size=8), H, float(torch.linalg.eigvalsh(H)[-1])


def test_slice_along_top_eigenvector_is_the_parabola() -> None:
    objective, H, lam = least_squares_at_minimum()
    d = eigen_directions(objective, k=1, tol=1e-10)
    assert d.description["eigenvalues"][0] == pytest.approx(lam, rel=1e-12)
    assert abs(d.description["slopes"][0]) < 1e-12  # a minimum: no linear term
    v = d.vectors[0]
    torch.testing.assert_close(H @ v, lam * v, rtol=0, atol=1e-12)
    t = np.linspace(-2.0, 2.0, 9)
    result = slice_1d(objective, d, t)
    assert result.center_loss == pytest.approx(objective.loss(), rel=1e-14)
    np.testing.assert_allclose(result.loss, result.center_loss + lam * t**2 / 2, rtol=0, atol=1e-8)
    assert result.accuracy is None  # one output column: no class scores
    assert result.evaluations == 10 and result.settings["points"] == 10
    assert result.settings["forward_passes"] == 10 * 4 and result.settings["bn"] == "eval"
    assert result.directions["kind"] == "eig"


def test_two_eigen_directions_give_the_separable_quadratic() -> None:
    """Away from the minimum of a quadratic: L = L₀ + s₁α + s₂β + (λ₁α² + λ₂β²)/2 exactly."""
    objective, H, _ = least_squares_at_minimum(1)
    with torch.no_grad():
        objective.model.weight.add_(0.7)
    d = eigen_directions(objective, k=2, tol=1e-10)
    lams = torch.linalg.eigvalsh(H).flip(0)[:2].numpy()
    np.testing.assert_allclose(d.description["eigenvalues"], lams, rtol=1e-12)
    g = objective.gradient()
    np.testing.assert_allclose(d.description["slopes"], (d.vectors @ g).numpy(), rtol=1e-12)
    a, b = np.linspace(-1, 1, 5), np.linspace(-0.5, 1.5, 4)
    result = slice_2d(objective, d, a, b)
    A, B = np.meshgrid(a, b, indexing="ij")
    s1, s2 = d.description["slopes"]
    expected = result.center_loss + s1 * A + s2 * B + (lams[0] * A**2 + lams[1] * B**2) / 2
    np.testing.assert_allclose(result.loss, expected, rtol=0, atol=1e-10)


def test_linear_model_grid_matches_the_closed_form() -> None:
    """f(x) = W x + b with MSE: at (α, β) the weights are W₀ + αA₁ + βA₂ (biases likewise); the loss
    and the accuracy of every grid point computed directly in NumPy."""
    gen = torch.Generator().manual_seed(2)
    X, Y = torch.randn(20, 5, generator=gen, dtype=F64), torch.randn(20, 3, generator=gen, dtype=F64)
    torch.manual_seed(0)
    model = nn.Linear(5, 3).double()
    objective = Objective(model, mse, (X, Y), batch_size=7)  # batches of 7, 7, 6: weighting matters
    d = random_directions(objective, 2, seed=3, include_bn_and_bias=True)
    parts = [objective.unflatten(v) for v in d.vectors]
    a, b = np.linspace(-1, 1, 7), np.linspace(-2, 1, 5)
    result = slice_2d(objective, d, a, b, chunk_size=4)
    W0, b0 = model.weight.detach().numpy(), model.bias.detach().numpy()
    Xn, Yn = X.numpy(), Y.numpy()
    for i, alpha in enumerate(a):
        for j, beta in enumerate(b):
            W = W0 + alpha * parts[0]["weight"].numpy() + beta * parts[1]["weight"].numpy()
            bias = b0 + alpha * parts[0]["bias"].numpy() + beta * parts[1]["bias"].numpy()
            pred = Xn @ W.T + bias
            assert result.loss[i, j] == pytest.approx(0.5 * ((pred - Yn) ** 2).sum(1).mean(), rel=1e-12)
            assert result.accuracy[i, j] == pytest.approx((pred.argmax(1) == Yn.argmax(1)).mean(), abs=1e-12)
    assert result.loss.shape == (7, 5) and result.betas is not None and result.dims == 2


def bn_objective(bn: str) -> Objective:
    torch.manual_seed(0)
    model = build_model("cnn", in_channels=2, num_classes=3, channels=[3], norm="bn", image_size=4).double()
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(24, 2, 4, 4, generator=gen, dtype=F64), torch.randint(0, 3, (24,), generator=gen)
    return Objective(model, cross_entropy, (x, y), bn=bn, batch_size=10)


@pytest.mark.parametrize("bn", ["eval", "batch"])
def test_vmap_loop_and_chunking_agree_and_leave_the_model_alone(bn: str) -> None:
    objective = bn_objective(bn)
    model = objective.model
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    d = random_directions(objective, 2, seed=1)
    a = np.linspace(-1, 1, 4)
    fast = slice_2d(objective, d, a, a, method="vmap", chunk_size=5)
    slow = slice_2d(objective, d, a, a, method="loop", chunk_size=16)
    assert fast.settings["method"] == "vmap" and slow.settings["method"] == "loop"
    assert fast.settings["method_selection"] is None  # chosen by the caller, not timed
    np.testing.assert_allclose(fast.loss, slow.loss, rtol=1e-12)
    np.testing.assert_allclose(fast.accuracy, slow.accuracy, rtol=0, atol=1e-12)
    assert fast.center_loss == pytest.approx(objective.loss(), rel=1e-12)
    # one point by hand: the objective of a model holding θ + α d₁ + β d₂
    shifted = objective.parameter_vector() + a[1] * d.vectors[0] + a[2] * d.vectors[1]
    with torch.no_grad():
        for name, value in objective.unflatten(shifted).items():
            objective.params[name].copy_(value)
    assert fast.loss[1, 2] == pytest.approx(objective.loss(), rel=1e-12)
    model.load_state_dict(state)
    assert model.training  # flags restored; buffers never touched by the slices
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k])


class DataDependent(nn.Module):
    """A model torch.vmap cannot batch: Python control flow on an output."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = self.lin(x)
        return h if bool(h.abs().max() < 1e6) else torch.zeros_like(h)


def test_auto_times_both_methods_and_keeps_the_faster() -> None:
    objective = bn_objective("batch")
    d = random_directions(objective, 2, seed=0)
    result = slice_2d(objective, d, [-1.0, 1.0], [0.0, 1.0], chunk_size=3)
    selection = result.settings["method_selection"]
    seconds = selection["trial_seconds_per_point"]
    assert set(seconds) == {"vmap", "loop"} and selection["failed"] == {} and selection["trial_points"] == 3
    assert result.settings["method"] == selection["chosen"] == min(seconds, key=seconds.__getitem__)


def test_auto_takes_the_loop_for_models_vmap_cannot_batch() -> None:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(12, 3, generator=gen, dtype=F64), torch.randint(0, 2, (12,), generator=gen)
    objective = Objective(DataDependent().double(), cross_entropy, (x, y))
    d = random_directions(objective, 1, seed=0)
    auto = slice_1d(objective, d, [-1.0, 0.5, 1.0])
    selection = auto.settings["method_selection"]
    assert auto.settings["method"] == "loop" and selection["chosen"] == "loop"
    assert "vmap" in selection["failed"] and set(selection["trial_seconds_per_point"]) == {"loop"}
    loop = slice_1d(objective, d, [-1.0, 0.5, 1.0], method="loop")
    np.testing.assert_array_equal(auto.loss, loop.loss)
    with pytest.raises(ObjectiveError, match="torch.vmap"):
        slice_1d(objective, d, [0.0], method="vmap")


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    objective = bn_objective("eval")
    d = random_directions(objective, 2, seed=0)
    result = slice_2d(objective, d, [-1.0, 0.0, 2.0], [-1.0, 1.0], path=[objective.parameter_vector() + d.vectors[0]])
    npz, js = result.save(tmp_path / "sub" / "slice.npz")
    assert npz.name == "slice.npz" and js.name == "slice.json"
    back = SliceResult.load(tmp_path / "sub" / "slice")
    for name in ("alphas", "betas", "loss", "accuracy", "path", "path_residuals"):
        np.testing.assert_array_equal(getattr(back, name), getattr(result, name))
    assert back.directions == result.directions and back.settings == result.settings
    assert back.center_loss == result.center_loss and back.path_labels == ["vector[0]"]
    np.testing.assert_allclose(back.path, [[1.0, 0.0]], atol=1e-12)
    with pytest.raises(DataError, match="no such slice file"):
        SliceResult.load(tmp_path / "missing")


def test_the_precision_setting_is_the_operators_and_is_recorded() -> None:
    """bf16 autocasts the forward passes (losses near, not equal to, strict float32 ones); the setting is
    recorded; a float64 objective or an unknown name is refused before any point is evaluated."""
    gen = torch.Generator().manual_seed(4)
    X, Y = torch.randn(32, 6, generator=gen), torch.randn(32, 3, generator=gen)
    torch.manual_seed(0)
    objective = Objective(nn.Linear(6, 3), mse, (X, Y))
    d = random_directions(objective, 1, seed=1)
    strict, fast = (slice_1d(objective, d, [-0.5, 0.5], precision=p, method="loop") for p in ("strict", "bf16"))
    assert strict.settings["precision"] == "strict" and fast.settings["precision"] == "bf16"
    assert not np.array_equal(strict.loss, fast.loss)
    assert np.allclose(fast.loss, strict.loss, rtol=1e-2)
    float64 = Objective(nn.Linear(6, 3).double(), mse, (X.double(), Y.double()))
    calls: list[int] = []
    with pytest.raises(ConfigError, match="autocasts float32 products; this objective computes in float64"):
        slice_1d(float64, torch.ones(21, dtype=F64), [0.0], precision="bf16", progress=lambda *a: calls.append(1))
    with pytest.raises(ConfigError, match="precision must be 'strict', 'tf32' or 'bf16', got 'fp16'"):
        slice_1d(objective, d, [0.0], precision="fp16")  # type: ignore[arg-type]
    assert calls == []


def test_a_slice_sets_the_cuda_matmul_mode_of_its_precision_and_restores_it() -> None:
    """The backend flags are global (set on any build): IEEE float32 while a strict slice evaluates, TF32
    while a tf32 one does, the caller's setting afterwards."""
    flags = (torch.backends.cuda.matmul, torch.backends.cudnn.conv)  # type: ignore[attr-defined]
    before = tuple(f.fp32_precision for f in flags)
    seen: list[tuple[str, ...]] = []

    class Spy(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            seen.append(tuple(f.fp32_precision for f in flags))
            return x

    X, Y = torch.randn(8, 3, dtype=F64), torch.randn(8, 2, dtype=F64)
    objective = Objective(nn.Sequential(nn.Linear(3, 2), Spy()).double(), mse, (X, Y))
    d = random_directions(objective, 1, seed=0)
    for precision, mode in (("strict", "ieee"), ("tf32", "tf32")):
        seen.clear()
        slice_1d(objective, d, [0.0, 1.0], precision=precision, method="loop")
        assert seen and set(seen) == {(mode, mode)}
        assert tuple(f.fp32_precision for f in flags) == before


def test_bad_input_is_refused_with_clear_errors() -> None:
    objective, _, _ = least_squares_at_minimum()
    two = random_directions(objective, 2, seed=0)
    with pytest.raises(ConfigError, match="one direction"):
        slice_1d(objective, two, [0.0, 1.0])
    with pytest.raises(ConfigError, match="two directions"):
        slice_2d(objective, Directions(two.vectors[:1]), [0.0], [0.0])
    with pytest.raises(ConfigError, match=r"shape \(k, 4\)"):
        slice_1d(objective, torch.ones(5, dtype=F64), [0.0])
    with pytest.raises(ConfigError, match="NaN"):
        slice_1d(objective, torch.full((4,), float("nan"), dtype=F64), [0.0])
    with pytest.raises(ConfigError, match="zero vector"):
        slice_1d(objective, torch.zeros(4, dtype=F64), [0.0])
    one = two.vectors[0]
    with pytest.raises(ConfigError, match="strictly increasing"):
        slice_1d(objective, one, [0.0, 0.0, 1.0])
    with pytest.raises(ConfigError, match="NaN or infinite"):
        slice_1d(objective, one, [0.0, float("inf")])
    with pytest.raises(ConfigError, match="non-empty one-dimensional"):
        slice_1d(objective, one, [])
    with pytest.raises(ConfigError, match="sequence of numbers"):
        slice_1d(objective, one, ["a"])
    with pytest.raises(ConfigError, match="method"):
        slice_1d(objective, one, [0.0], method="jit")
    with pytest.raises(ConfigError, match="chunk_size"):
        slice_1d(objective, one, [0.0], chunk_size=0)
    with pytest.raises(ConfigError, match="coords"):
        evaluate_points(objective, objective.parameter_vector(), two.vectors, np.zeros((3, 3)))
