"""fastadapt.measure against hand computations: closed-form gradient steps, statistics, known allocations."""
import statistics
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastadapt.algorithms import MAML
from fastadapt.measure import mean_and_ci, peak_memory_mib, scores_per_step, seconds_per_call
from fastadapt.tasks import Episode


def linear_regression_tasks(tasks=3, support=4, query=6, seed=0):
    """Random 1-D linear tasks y = a x + c, as an Episode of (tasks, points, 1) tensors."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(tasks, support + query, 1, generator=gen, dtype=torch.float64)
    a, c = torch.randn(2, tasks, 1, 1, generator=gen, dtype=torch.float64)
    y = a * x + c  # (tasks, points, 1)
    return Episode(x[:, :support], y[:, :support], x[:, support:], y[:, support:])


@pytest.mark.parametrize("vectorize", [True, False])
def test_scores_per_step_equal_hand_computed_gradient_steps(vectorize):
    model = nn.Linear(1, 1).double()
    episode = linear_regression_tasks()
    algorithm = MAML(model, inner_lr=0.1, inner_steps=1, loss_fn=F.mse_loss)
    params = algorithm.init_params()
    scores = scores_per_step(algorithm, params, episode, steps=(0, 1, 3), vectorize=vectorize)

    # By hand: for L = mean((w x + b - y)^2), dL/dw = 2 mean((w x + b - y) x), dL/db = 2 mean(w x + b - y).
    expected = torch.zeros(3, 3, dtype=torch.float64)
    for t, (xs, ys, xq, yq) in enumerate(zip(*episode)):
        w, b = params["weight"].item(), params["bias"].item()
        done = 0
        for row, n in enumerate((0, 1, 3)):
            for _ in range(n - done):
                residual = w * xs + b - ys
                w, b = w - 0.1 * float(2 * (residual * xs).mean()), b - 0.1 * float(2 * residual.mean())
            done = n
            expected[row, t] = (w * xq + b - yq).pow(2).mean()
    torch.testing.assert_close(scores.double(), expected)


def test_scores_per_step_accuracy_and_inner_lr_override():
    torch.manual_seed(0)
    model = nn.Linear(2, 3)
    x = torch.randn(2, 9, 2)
    y = torch.arange(3).repeat(2, 3)  # (2, 9)
    episode = Episode(x[:, :3], y[:, :3], x[:, 3:], y[:, 3:])
    algorithm = MAML(model, inner_lr=0.5, inner_steps=1)
    params = algorithm.init_params()
    scores = scores_per_step(algorithm, params, episode, steps=(0, 2), inner_lr=1.0, vectorize=False)
    for t in range(2):  # an independent loop: torch.autograd.grad on the nn.Linear weights
        w, b = params["weight"].detach().clone(), params["bias"].detach().clone()
        for _ in range(2):
            w.requires_grad_(True), b.requires_grad_(True)
            loss = F.cross_entropy(episode.x_support[t] @ w.T + b, episode.y_support[t])
            gw, gb = torch.autograd.grad(loss, [w, b])
            w, b = (w - 1.0 * gw).detach(), (b - 1.0 * gb).detach()
        predicted = (episode.x_query[t] @ w.T + b).argmax(-1)
        assert scores[1, t].item() == pytest.approx((predicted == episode.y_query[t]).float().mean().item())
        predicted0 = (episode.x_query[t] @ params["weight"].detach().T + params["bias"].detach()).argmax(-1)
        assert scores[0, t].item() == pytest.approx((predicted0 == episode.y_query[t]).float().mean().item())


def test_scores_per_step_refuses_descending_steps():
    algorithm = MAML(nn.Linear(1, 1), inner_lr=0.1)
    with pytest.raises(ValueError, match="ascending"):
        scores_per_step(algorithm, algorithm.init_params(), linear_regression_tasks(), steps=(3, 1))


def test_mean_and_ci_equal_statistics():
    scores = torch.tensor([[0.2, 0.4, 0.9, 0.5], [1.0, 0.0, 0.5, 0.25]])
    mean, ci = mean_and_ci(scores)
    for row in range(2):
        values = scores[row].tolist()
        assert mean[row].item() == pytest.approx(statistics.fmean(values))
        assert ci[row].item() == pytest.approx(1.96 * statistics.stdev(values) / len(values) ** 0.5)


def test_seconds_per_call_warms_up_once_then_times_repeats():
    calls = []
    seconds = seconds_per_call(lambda: calls.append(sum(range(20_000))), repeats=4)
    assert len(calls) == 5 and seconds >= 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak resident size is read from /proc (Linux)")
def test_peak_memory_sees_a_known_allocation():
    size_mib = 96
    grown = peak_memory_mib(lambda: torch.ones(size_mib * 2**20 // 4))  # float32: 4 bytes each, pages touched
    idle = peak_memory_mib(lambda: None)
    assert size_mib * 0.9 <= grown <= size_mib * 1.5, grown
    assert idle < size_mib * 0.25, idle
