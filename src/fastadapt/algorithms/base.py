"""What every algorithm shares: the model, the inner-loop settings, one meta-gradient per batch."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..core import LossFn, Params, accuracy, batched_loss, batched_query_outputs
from ..models import params_of
from ..tasks import Episode


@dataclass
class MetaLearner:
    """Base class: MAML's meta-gradient; subclasses change one piece each."""

    model: nn.Module
    inner_lr: float = 0.4
    inner_steps: int = 1
    loss_fn: LossFn = F.cross_entropy
    first_order: bool = False
    vectorize: bool | None = None  # None: the faster path measured for the device (core.default_vectorize)
    name: str = field(default="maml", init=False)
    embeds_support_with_query = False  # True when predict already normalises queries together with the support set

    def __post_init__(self):
        steps, lr = self.inner_steps, self.inner_lr
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
            raise ValueError(f"inner_steps must be 0 or more, got {steps!r}.")
        if not (isinstance(lr, (int, float)) and not isinstance(lr, bool) and math.isfinite(lr) and lr > 0):
            raise ValueError(f"inner_lr must be a positive number, got {lr!r}.")

    def init_params(self) -> Params:
        """The meta-parameters to learn, as fresh leaf tensors."""
        return params_of(self.model)

    def adapt_kwargs(self, params: Params, inner_steps: int | None = None) -> dict:
        """Keyword arguments of core.adapt for this algorithm."""
        return dict(
            inner_steps=self.inner_steps if inner_steps is None else inner_steps,
            inner_lr=self.inner_lr,
            loss_fn=self.loss_fn,
            first_order=self.first_order,
        )

    def model_params(self, params: Params) -> Params:
        """The entries of params that belong to the model."""
        return params

    def predict(self, params: Params, x_support, y_support, x_query, inner_steps: int | None = None) -> torch.Tensor:
        """Adapt to each task's support set and return outputs on its query set (tasks, points, ...)."""
        return batched_query_outputs(
            self.model, self.model_params(params), x_support, y_support, x_query,
            vectorize=self.vectorize, **self.adapt_kwargs(params, inner_steps),
        )

    def meta_gradient(self, params: Params, episode: Episode) -> tuple[Params, dict]:
        """Gradient of the mean query loss after adaptation with respect to params, plus metrics."""
        outputs = self.predict(params, episode.x_support, episode.y_support, episode.x_query)
        loss = batched_loss(outputs, episode.y_query, self.loss_fn)
        grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        grads = {k: torch.zeros_like(p) if g is None else g for (k, p), g in zip(params.items(), grads)}
        return grads, metrics(loss, outputs, episode.y_query)


def metrics(loss: torch.Tensor, outputs: torch.Tensor, targets: torch.Tensor) -> dict:
    """loss, and accuracy when the targets are class labels."""
    out = {"loss": float(loss.detach())}
    if not targets.is_floating_point():
        out["accuracy"] = float(accuracy(outputs, targets).mean())
    return out
