"""evaluate and confidence_interval against independent computations: statistics, a per-task loop by hand."""
from __future__ import annotations

import math
import statistics

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from fastadapt import EpisodeSampler, confidence_interval, evaluate, make_algorithm, mlp, sample_sinusoids
from fastadapt.models import Conv4
from fastadapt.tasks import Episode


@pytest.mark.parametrize("values", [[0.8, 0.9, 1.0, 0.6], [1.0] * 3 + [0.0], [0.25 * i for i in range(40)]])
def test_confidence_interval_against_statistics(values):
    expected = 1.96 * statistics.stdev(values) / math.sqrt(len(values))  # the sample standard deviation
    assert confidence_interval(torch.tensor(values, dtype=torch.float64)) == pytest.approx(expected, rel=1e-12)


def test_confidence_interval_of_one_value_is_undefined():
    assert math.isnan(confidence_interval(torch.tensor([0.7])))


class Recorder:
    """A task source that remembers every task it hands out, keyed by its seed."""

    def __init__(self, sample):
        self.sample, self.tasks = sample, {}

    def __call__(self, n: int, seed: int) -> Episode:
        episode = self.sample(n, seed)
        self.tasks[seed] = episode
        return episode


def sinusoid_problem():
    torch.manual_seed(0)
    algorithm = make_algorithm("maml", mlp(), inner_lr=0.02, inner_steps=2, loss_fn=F.mse_loss)
    return algorithm, algorithm.init_params(), lambda n, seed: sample_sinusoids(n, 5, 7, seed=seed).episode


def image_problem():
    torch.manual_seed(0)
    algorithm = make_algorithm("maml", Conv4(n_way=3, hidden=8), inner_lr=0.4, inner_steps=1)
    images = torch.randint(0, 256, (6, 20, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    sampler = EpisodeSampler(images)  # (classes, examples, 1, 28, 28)
    return algorithm, algorithm.init_params(), lambda n, seed: sampler.sample(n, 3, 2, 2, seed=seed)


def by_hand(algorithm, params, episode: Episode, steps: int) -> float:
    """One task's score: `steps` SGD steps with autograd.grad on the support set, then MSE or accuracy on the query."""
    fast = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    (xs,), (ys,), (xq,), (yq,) = episode
    for _ in range(steps):
        loss = algorithm.loss_fn(functional_call(algorithm.model, fast, (xs,)), ys)
        grads = torch.autograd.grad(loss, list(fast.values()))
        fast = {k: (w - algorithm.inner_lr * g).detach().requires_grad_(True) for (k, w), g in zip(fast.items(), grads)}
    with torch.no_grad():
        outputs = functional_call(algorithm.model, fast, (xq,))  # all queries in one batch, as evaluate does
    if yq.is_floating_point():
        return float((outputs - yq).pow(2).mean())
    return float((outputs.argmax(-1) == yq).double().mean())


@pytest.mark.parametrize("problem", [sinusoid_problem, image_problem])
def test_evaluate_equals_a_per_task_loop_and_does_not_depend_on_the_batch(problem):
    algorithm, params, sample = problem()
    recorder = Recorder(sample)
    result = evaluate(algorithm, params, recorder, tasks=11, seed=3, batch=4, progress=False, return_scores=True)
    assert result["tasks"] == 11 and result["scores"].shape == (11,)
    assert len(recorder.tasks) == 11 and all(e.x_support.shape[0] == 1 for e in recorder.tasks.values())
    expected = torch.tensor([by_hand(algorithm, params, recorder.tasks[s], algorithm.inner_steps)
                             for s in recorder.tasks], dtype=torch.float64)  # in the order they were drawn
    torch.testing.assert_close(result["scores"], expected, rtol=1e-4, atol=1e-6)
    key = "mse" if "mse" in result else "accuracy"
    assert result[key] == pytest.approx(statistics.fmean(expected.tolist()), rel=1e-4, abs=1e-6)
    assert result["ci95"] == pytest.approx(1.96 * statistics.stdev(result["scores"].tolist()) / math.sqrt(11))
    for batch in (1, 11, 25):  # the same tasks, whatever the batch
        other = Recorder(sample)
        again = evaluate(algorithm, params, other, tasks=11, seed=3, batch=batch, progress=False, return_scores=True)
        assert list(other.tasks) == list(recorder.tasks)
        torch.testing.assert_close(again["scores"], result["scores"], rtol=1e-5, atol=1e-6)


def test_evaluate_with_more_inner_steps_is_the_per_task_loop_with_more_steps():
    algorithm, params, sample = sinusoid_problem()
    recorder = Recorder(sample)
    result = evaluate(algorithm, params, recorder, tasks=5, seed=0, inner_steps=6, progress=False, return_scores=True)
    expected = [by_hand(algorithm, params, recorder.tasks[s], 6) for s in recorder.tasks]
    torch.testing.assert_close(result["scores"], torch.tensor(expected, dtype=torch.float64), rtol=1e-4, atol=1e-6)
    assert result["inner_steps"] == 6


def test_evaluate_one_query_at_a_time_equals_a_batch_of_support_plus_that_query():
    """transductive=False: each query is classified in one batch with the support set only."""
    algorithm, params, sample = image_problem()
    recorder = Recorder(sample)
    result = evaluate(algorithm, params, recorder, tasks=3, seed=1, progress=False, return_scores=True,
                      transductive=False)
    assert result["transductive"] is False
    for score, episode in zip(result["scores"].tolist(), recorder.tasks.values()):
        (xs,), (ys,), (xq,), (yq,) = episode
        fast = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        loss = F.cross_entropy(functional_call(algorithm.model, fast, (xs,)), ys)
        grads = torch.autograd.grad(loss, list(fast.values()))
        fast = {k: (w - 0.4 * g).detach() for (k, w), g in zip(fast.items(), grads)}
        alone = [functional_call(algorithm.model, fast, (torch.cat([xs, xq[i:i + 1]]),))[-1] for i in range(len(yq))]
        correct = [int(logits.argmax()) == int(y) for logits, y in zip(alone, yq)]
        assert score == pytest.approx(sum(correct) / len(correct))


def test_evaluate_refuses_a_bad_batch():
    algorithm, params, sample = sinusoid_problem()
    with pytest.raises(ValueError, match=r"batch must be a positive integer, got 0\."):
        evaluate(algorithm, params, sample, tasks=2, batch=0, progress=False)
