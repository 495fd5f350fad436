"""Evaluation: mean accuracy (or MSE) over many new tasks with a 95% confidence interval."""
from __future__ import annotations

import math

import torch

from .algorithms import MetaLearner
from .core import accuracy


def confidence_interval(values: torch.Tensor) -> float:
    """Half-width of the 95% interval of the mean: 1.96 * std / sqrt(n) (sample std)."""
    n = values.numel()
    return float(1.96 * values.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")


def predict_queries(algorithm: MetaLearner, params: dict, x_support: torch.Tensor, y_support: torch.Tensor,
                    x_query: torch.Tensor, inner_steps: int | None = None, transductive: bool = False) -> torch.Tensor:
    """Outputs (queries, n_way) for one task. transductive=False classifies each query in one batch with
    the support set only (BatchNorm never mixes queries); True runs all queries as one batch."""
    if transductive:
        return algorithm.predict(params, x_support[None], y_support[None], x_query[None], inner_steps)[0]
    n = x_query.shape[0]
    x_one = x_query.unsqueeze(1)  # (queries, 1, ...)
    if not algorithm.embeds_support_with_query:  # MAML-like: put the support set in the query's batch
        x_one = torch.cat([x_support.expand(n, *x_support.shape), x_one], 1)  # (queries, support + 1, ...)
    outputs = algorithm.predict(params, x_support.expand(n, *x_support.shape), y_support.expand(n, -1), x_one,
                                inner_steps)  # (queries, 1 or support + 1, n_way)
    return outputs[:, -1]  # (queries, n_way)


def evaluate(algorithm: MetaLearner, params: dict, sample_tasks, tasks: int = 1000, seed: int = 0,
             inner_steps: int | None = None, batch: int = 25, progress: bool = True,
             return_scores: bool = False) -> dict:
    """Adapt to `tasks` new tasks drawn by sample_tasks(n, seed) and score each on its query set;
    return_scores adds the per-task scores ("scores", a tensor) for paired comparisons."""
    from tqdm import tqdm

    if tasks < 1:
        raise ValueError(f"tasks must be a positive integer, got {tasks!r}.")
    if inner_steps is not None and (not isinstance(inner_steps, int) or isinstance(inner_steps, bool)
                                    or inner_steps < 0):
        raise ValueError(f"inner_steps must be 0 or more, got {inner_steps!r}.")
    scores, n_way, k_shot = [], None, None
    params = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    for start in tqdm(range(0, tasks, batch), desc="evaluating", disable=not progress, leave=False):
        size = min(batch, tasks - start)
        episode = sample_tasks(size, seed * 1_000_003 + start + 7_919)
        with torch.no_grad():
            outputs = algorithm.predict(params, episode.x_support, episode.y_support, episode.x_query, inner_steps)
        if episode.y_query.is_floating_point():
            scores.append((outputs - episode.y_query).pow(2).flatten(1).mean(1).cpu())  # (size,) MSE per task
        else:
            scores.append(accuracy(outputs, episode.y_query).cpu())  # (size,)
            n_way = int(episode.y_support.max()) + 1
            k_shot = episode.y_support.shape[1] // n_way
    scores = torch.cat(scores).double()
    steps = algorithm.inner_steps if inner_steps is None else inner_steps
    if n_way is None:
        result = {"mse": float(scores.mean()), "ci95": confidence_interval(scores), "tasks": tasks, "inner_steps": steps}
    else:
        result = {"accuracy": float(scores.mean()), "ci95": confidence_interval(scores), "tasks": tasks,
                  "n_way": n_way, "k_shot": k_shot, "inner_steps": steps}
    return {**result, "scores": scores} if return_scores else result
