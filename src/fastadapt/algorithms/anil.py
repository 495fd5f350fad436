"""ANIL (Raghu et al. 2020): Almost No Inner Loop, adapt only the head."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from ..core import default_vectorize
from .base import MetaLearner


@dataclass
class ANIL(MetaLearner):
    """MAML whose inner loop updates only the final layer ("head.*"); the body is meta-learned.

    The body does not change during a task's inner loop, so its features of the support and query sets are
    computed once per task and the inner steps run on the linear head alone (the same numbers as adapting
    through the whole network, with one body pass per set instead of one per step). This needs the model's
    head to be a linear layer named `head` (Conv4 and mlp); other models adapt through the whole network.
    """

    head_prefix: str = "head."
    name: str = field(default="anil", init=False)

    def adapt_kwargs(self, params, inner_steps=None) -> dict:
        keys = [k for k in params if k.startswith(self.head_prefix)]
        return {**super().adapt_kwargs(params, inner_steps), "adapt_keys": keys}

    def _linear_head(self) -> bool:
        return isinstance(getattr(self.model, "head", None), torch.nn.Linear) and self.head_prefix == "head."

    def features(self, params, x) -> torch.Tensor:
        """The input of the head for images x: the body's features, with this batch's BatchNorm statistics."""
        captured = []
        hook = self.model.head.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
        try:
            functional_call(self.model, params, (x,))
        finally:
            hook.remove()
        return captured[0]  # (batch, features)

    def _adapt_head(self, params, support_features, y_support, inner_steps):
        """The head's weight and bias after inner_steps on the support features (second order unless first_order)."""
        head = (params["head.weight"], params["head.bias"])

        def loss(head):
            return self.loss_fn(F.linear(support_features, *head), y_support)

        steps = self.inner_steps if inner_steps is None else inner_steps
        for _ in range(steps):
            grads = grad(loss)(head)
            if self.first_order:
                grads = tuple(g.detach() for g in grads)
            head = tuple(h - self.inner_lr * g for h, g in zip(head, grads))
        return head

    def adapt_task(self, params, x_support, y_support, inner_steps=None):
        if not self._linear_head():
            return super().adapt_task(params, x_support, y_support, inner_steps)
        weight, bias = self._adapt_head(params, self.features(params, x_support), y_support, inner_steps)
        return {**params, "head.weight": weight, "head.bias": bias}

    def predict(self, params, x_support, y_support, x_query, inner_steps=None):
        if not self._linear_head():
            return super().predict(params, x_support, y_support, x_query, inner_steps)

        def task(xs, ys, xq):
            head = self._adapt_head(params, self.features(params, xs), ys, inner_steps)
            return F.linear(self.features(params, xq), *head)  # (queries, n_way)

        vectorize = default_vectorize(x_support, x_query) if self.vectorize is None else self.vectorize
        if vectorize:
            return vmap(task, randomness="same")(x_support, y_support, x_query)
        return torch.stack([task(*t) for t in zip(x_support, y_support, x_query)])  # (tasks, queries, n_way)
