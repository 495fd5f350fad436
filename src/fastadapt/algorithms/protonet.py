"""Prototypical Networks (Snell et al. 2017): classify by distance to class means, no inner loop."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.func import functional_call, vmap

from ..core import batched_loss
from ..models import Conv4, has_running_stats
from .base import MetaLearner, adam, metrics


def prototype_logits(support_features, y_support, query_features, n_way: int) -> torch.Tensor:
    """Negative squared Euclidean distances from each query to each class mean of the support set."""
    one_hot = torch.nn.functional.one_hot(y_support, n_way).to(support_features.dtype)  # (support, n_way)
    prototypes = one_hot.T @ support_features / one_hot.sum(0).unsqueeze(1)  # (n_way, features)
    return -(query_features.unsqueeze(1) - prototypes.unsqueeze(0)).pow(2).sum(-1)  # (query, n_way)


@dataclass
class ProtoNet(MetaLearner):
    """Embed support and query together (one batch per task, as in the paper), compare to prototypes.

    The paper's encoder keeps BatchNorm running averages: in train() each task's batch is normalised with
    its own statistics and updates the averages; in eval() (load_checkpoint, validation) every image is
    normalised with the averages, so each query is classified on its own (non-transductive).
    """

    inner_steps: int = 0
    name: str = field(default="protonet", init=False)
    fixed_ways = False  # prototypes are made from the support set: any number of classes
    classification_only = True
    episodes_per_epoch = 100  # jakesnell/prototypical-networks: an epoch is 100 episodes ...
    halve_every_epochs = 20  # ... and Adam's rate halves every 20 epochs

    @classmethod
    def image_model(cls, n_way):
        """The paper's embedding network: four max-pooled conv blocks with standard BatchNorm, no head (64 features)."""
        return Conv4(n_way=None, pool=True, running_stats=True)

    def make_optimizer(self, params, meta_lr, iterations):
        """Adam at meta_lr, halved every 20 epochs of 100 episodes as in the paper's code, which steps a StepLR(20)
        at the start of every epoch: epoch e (counted from 1) runs at meta_lr * 0.5 ** (e // 20)."""
        optimizer = adam(params, meta_lr)
        epoch, every = self.episodes_per_epoch, self.halve_every_epochs
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: 0.5 ** ((t // epoch + 1) // every))

    def predict(self, params, x_support, y_support, x_query, inner_steps=None):
        n_way = int(y_support.max()) + 1
        n_support = x_support.shape[1]

        def task(xs, ys, xq):
            features = functional_call(self.model, params, (torch.cat([xs, xq]),))  # (support + query, features)
            return prototype_logits(features[:n_support], ys, features[n_support:], n_way)

        if self.model.training and has_running_stats(self.model):  # the running averages change: one task at a time
            return torch.stack([task(*t) for t in zip(x_support, y_support, x_query)])
        return vmap(task)(x_support, y_support, x_query)  # (tasks, query, n_way)

    def predict_each_query(self, params, x_support, y_support, x_query, inner_steps=None):
        """Each query classified without the other queries: in eval() with running averages every image is
        normalised on its own, so one batch does; otherwise each query is embedded with the support set only."""
        if not self.model.training and has_running_stats(self.model):
            return self.predict(params, x_support[None], y_support[None], x_query[None])[0]  # (queries, n_way)
        n = x_query.shape[0]
        logits = self.predict(params, x_support.expand(n, *x_support.shape), y_support.expand(n, -1),
                              x_query.unsqueeze(1))  # (queries, 1, n_way)
        return logits[:, 0]  # (queries, n_way)

    def meta_gradient(self, params, episode):
        logits = self.predict(params, episode.x_support, episode.y_support, episode.x_query)
        loss = batched_loss(logits, episode.y_query)
        grads = dict(zip(params, torch.autograd.grad(loss, list(params.values()))))
        return grads, metrics(loss, logits, episode.y_query)
