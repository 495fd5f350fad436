"""Reptile (Nichol et al. 2018): move the initialization towards the adapted weights."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.func import functional_call

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
        tasks, outputs = episode.x_support.shape[0], []
        for x_support, y_support, x_query in zip(episode.x_support, episode.y_support, episode.x_query):
            phi = adapt(self.model, theta, x_support, y_support, functional=False, **kwargs)
            for k in grads:
                grads[k] += (theta[k] - phi[k].detach()) / tasks
            with torch.no_grad():  # metrics from the same adapted weights, no second adaptation
                outputs.append(functional_call(self.model, phi, (x_query,)))  # (n_way * n_query, n_way)
        outputs = torch.stack(outputs)  # (tasks, n_way * n_query, n_way)
        return grads, metrics(batched_loss(outputs, episode.y_query, self.loss_fn), outputs, episode.y_query)
