"""Objective.evaluate: the example-weighted mean loss and accuracy over the probe set, against a hand computation."""

import math

import torch
from torch import nn

from sharpscope.curvature import Objective
from sharpscope.landscape.grid import evaluate_points
from sharpscope.track.tracker import evaluate as tracker_evaluate


def _problem() -> tuple[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    g = torch.Generator().manual_seed(0)
    model = nn.Linear(4, 3).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(3, 4, generator=g, dtype=torch.float64))
        model.bias.copy_(torch.randn(3, generator=g, dtype=torch.float64))
    x = torch.randn(8, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (8,), generator=g)
    return model, [(x[:3], y[:3]), (x[3:], y[3:])]  # unequal batches: the weights are 3/8 and 5/8


def _by_hand(w: torch.Tensor, b: torch.Tensor, batches: list) -> tuple[float, float]:
    """Cross-entropy and accuracy of every example, summed and divided by the number of examples."""
    total_loss, total_correct, n = 0.0, 0, 0
    for x, y in batches:
        for xi, yi in zip(x.tolist(), y.tolist()):
            logits = [sum(w[c, j].item() * xi[j] for j in range(4)) + b[c].item() for c in range(3)]
            total_loss += math.log(sum(math.exp(v) for v in logits)) - logits[yi]
            total_correct += max(range(3), key=logits.__getitem__) == yi
            n += 1
    return total_loss / n, total_correct / n


def test_evaluate_is_the_example_weighted_mean_loss_and_accuracy() -> None:
    model, batches = _problem()
    objective = Objective(model, nn.functional.cross_entropy, batches)
    loss, acc = objective.evaluate()
    want_loss, want_acc = _by_hand(model.weight.detach(), model.bias.detach(), batches)
    assert loss.shape == () and abs(float(loss) - want_loss) < 1e-12 and float(acc) == want_acc
    assert abs(float(loss) - objective.loss()) < 1e-12
    assert tracker_evaluate(objective) == (float(loss), float(acc))


def test_evaluate_at_points_matches_the_hand_computation_with_and_without_vmap() -> None:
    model, batches = _problem()
    objective = Objective(model, nn.functional.cross_entropy, batches)
    theta = objective.parameter_vector()
    direction = torch.linspace(-1.0, 1.0, objective.dim, dtype=torch.float64)
    thetas = torch.stack([theta, theta + 0.5 * direction, theta - 2.0 * direction])
    loop = objective.evaluate(thetas)
    vmap = objective.evaluate(thetas, vectorize=True)
    for i, row in enumerate(thetas):
        params = objective.unflatten(row)
        want_loss, want_acc = _by_hand(params["weight"], params["bias"], batches)
        for loss, acc in (loop, vmap):
            assert abs(float(loss[i]) - want_loss) < 1e-12 and float(acc[i]) == want_acc
    grid = evaluate_points(objective, theta, direction[None], [[0.0], [0.5], [-2.0]], method="loop")
    assert torch.allclose(torch.as_tensor(grid.loss), loop[0], rtol=0, atol=1e-14)


def test_no_accuracy_without_class_scores_or_for_a_closure() -> None:
    model, batches = _problem()
    regression = nn.Sequential(model, nn.Linear(3, 1).double())
    targets = [(x, torch.ones(len(x), 1, dtype=torch.float64)) for x, _ in batches]
    objective = Objective(regression, nn.functional.mse_loss, targets)
    loss, acc = objective.evaluate()
    assert acc is None and abs(float(loss) - objective.loss()) < 1e-12
    closure = Objective(model, None, batches, closure=lambda m, batch: nn.functional.cross_entropy(m(batch[0]), batch[1]))
    loss, acc = closure.evaluate()
    assert acc is None and abs(float(loss) - _by_hand(model.weight.detach(), model.bias.detach(), batches)[0]) < 1e-12
