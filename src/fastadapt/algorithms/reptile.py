"""Reptile (Nichol et al. 2018): move the initialization towards the adapted weights."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..core import adapt, batched_loss
from .base import MetaLearner, metrics


@dataclass
class Reptile(MetaLearner):
    """Meta-gradient theta - mean(phi_task), where phi_task is theta after SGD on the task's support set.

    A meta-optimizer step of SGD with learning rate eps gives theta + eps * (mean(phi) - theta).
    Evaluation adapts exactly like MAML.
    """

    inner_lr: float = 0.1
    inner_steps: int = 5
    first_order: bool = True
    name: str = field(default="reptile", init=False)

    def meta_gradient(self, params, episode):
        theta = {k: p.detach() for k, p in params.items()}
        kwargs = self.adapt_kwargs(theta)
        grads = {k: torch.zeros_like(p) for k, p in theta.items()}
        tasks = episode.x_support.shape[0]
        for x_support, y_support in zip(episode.x_support, episode.y_support):
            phi = adapt(self.model, theta, x_support, y_support, **kwargs)
            for k in grads:
                grads[k] += (theta[k] - phi[k].detach()) / tasks
        with torch.no_grad():
            outputs = self.predict(theta, episode.x_support, episode.y_support, episode.x_query)
        return grads, metrics(batched_loss(outputs, episode.y_query, self.loss_fn), outputs, episode.y_query)
