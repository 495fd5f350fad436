"""Prototypical Networks (Snell et al. 2017): classify by distance to class means, no inner loop."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.func import functional_call, vmap

from ..core import batched_loss
from .base import MetaLearner, metrics


def prototype_logits(support_features, y_support, query_features, n_way: int) -> torch.Tensor:
    """Negative squared Euclidean distances from each query to each class mean of the support set."""
    one_hot = torch.nn.functional.one_hot(y_support, n_way).to(support_features.dtype)  # (support, n_way)
    prototypes = one_hot.T @ support_features / one_hot.sum(0).unsqueeze(1)  # (n_way, features)
    return -(query_features.unsqueeze(1) - prototypes.unsqueeze(0)).pow(2).sum(-1)  # (query, n_way)


@dataclass
class ProtoNet(MetaLearner):
    """Embed support and query together (one batch per task, as in the paper), compare to prototypes."""

    inner_steps: int = 0
    name: str = field(default="protonet", init=False)
    embeds_support_with_query = True

    def predict(self, params, x_support, y_support, x_query, inner_steps=None):
        n_way = int(y_support.max()) + 1
        n_support = x_support.shape[1]

        def task(xs, ys, xq):
            features = functional_call(self.model, params, (torch.cat([xs, xq]),))  # (support + query, features)
            return prototype_logits(features[:n_support], ys, features[n_support:], n_way)

        return vmap(task)(x_support, y_support, x_query)  # (tasks, query, n_way)

    def meta_gradient(self, params, episode):
        logits = self.predict(params, episode.x_support, episode.y_support, episode.x_query)
        loss = batched_loss(logits, episode.y_query)
        grads = dict(zip(params, torch.autograd.grad(loss, list(params.values()))))
        return grads, metrics(loss, logits, episode.y_query)
