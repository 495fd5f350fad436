"""Baselines that involve no meta-learning, to measure what meta-learning adds.

- pixel_nearest_neighbour: label each query with its nearest support image in pixel space.
- pretrain_pooled: ordinary regression on all points of all training tasks pooled together
  (the "pretrained" baseline of the MAML sinusoid experiment).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .tasks import Episode


def pixel_nearest_neighbour(episode: Episode) -> torch.Tensor:
    """Predicted labels (tasks, queries): the label of the support image closest in Euclidean pixel distance."""
    distances = torch.cdist(episode.x_query.flatten(2).float(), episode.x_support.flatten(2).float())  # (tasks, q, s)
    return episode.y_support.gather(1, distances.argmin(-1))  # (tasks, queries)


def pretrain_pooled(model: nn.Module, sample_tasks: Callable[[int, int], Episode], iterations: int,
                    tasks_per_batch: int, lr: float, seed: int,
                    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.mse_loss) -> list[float]:
    """Train model in place with Adam on every point of `tasks_per_batch` tasks at a time, tasks pooled
    into one dataset (no inner loop); batch t is sample_tasks(tasks_per_batch, episode_seed(seed, t)),
    the same batches meta-training with the same seed sees. Returns the loss of every batch."""
    from .train import episode_seed

    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for iteration in range(iterations):
        episode = sample_tasks(tasks_per_batch, episode_seed(seed, iteration))
        x = torch.cat([episode.x_support, episode.x_query], dim=1).flatten(0, 1)  # (tasks * points, ...)
        y = torch.cat([episode.y_support, episode.y_query], dim=1).flatten(0, 1)  # (tasks * points, ...)
        loss = loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses
