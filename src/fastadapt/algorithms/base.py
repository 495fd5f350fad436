"""What every algorithm shares: the model, the inner-loop settings, one meta-gradient per batch.

An algorithm carries everything that makes it different, so the trainer, the evaluator and the CLI
never ask for its name: the network it needs (image_model), its inner loop (adapt_kwargs), its
meta-gradient, its outer optimizer and schedule (make_optimizer), and how it classifies one query
at a time without looking at the other queries (predict_each_query).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from ..checks import non_negative_int, positive_rate
from ..core import LossFn, Params, accuracy, adapt, batched_loss, batched_query_outputs
from ..models import Conv4, params_of
from ..tasks import Episode

Schedule = torch.optim.lr_scheduler.LRScheduler


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
    fixed_ways = True  # the model's head has one output per class, so a task must have exactly that many classes
    classification_only = False  # True when the algorithm cannot fit regression targets (sinusoids)
    schedule_spans_iterations = False  # True when make_optimizer's schedule depends on the run's length
    minibatch_inner_loop = False  # True when the inner loop takes an optimizer and mini-batches (Reptile)

    @property
    def sequential(self) -> bool:
        """True when each task's adaptation continues state left by the previous task (one process only)."""
        return False

    def __post_init__(self):
        non_negative_int("inner_steps", self.inner_steps)
        positive_rate("inner_lr", self.inner_lr)

    @classmethod
    def image_model(cls, n_way: int) -> nn.Module:
        """The network this algorithm meta-trains on images: MAML's Conv4 with an n_way head."""
        return Conv4(n_way=n_way)

    def init_params(self) -> Params:
        """The meta-parameters to learn, as fresh leaf tensors."""
        return params_of(self.model)

    def make_optimizer(self, params: Params, meta_lr: float, iterations: int) -> tuple[torch.optim.Optimizer,
                                                                                        Schedule | None]:
        """The outer optimizer and its learning-rate schedule (None: a constant rate): Adam, as in MAML."""
        return adam(params, meta_lr), None

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

    def state_dict(self) -> dict:
        """What the algorithm itself carries from step to step (saved in checkpoints); most carry nothing."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what state_dict returned."""

    def adapt_task(self, params: Params, x_support, y_support, inner_steps: int | None = None) -> Params:
        """The adapted parameters phi for one task: inner_steps of the inner loop on its support set."""
        return adapt(self.model, self.model_params(params), x_support, y_support,
                     **self.adapt_kwargs(params, inner_steps))

    def predict(self, params: Params, x_support, y_support, x_query, inner_steps: int | None = None) -> torch.Tensor:
        """Adapt to each task's support set and return outputs on its query set (tasks, points, ...)."""
        return batched_query_outputs(
            self.model, self.model_params(params), x_support, y_support, x_query,
            vectorize=self.vectorize, **self.adapt_kwargs(params, inner_steps),
        )

    def predict_each_query(self, params: Params, x_support, y_support, x_query,
                           inner_steps: int | None = None) -> torch.Tensor:
        """Outputs (queries, ...) for one task, each query classified alone: adapt once on the support set,
        then run every query in one batch with the support set only (BatchNorm never mixes queries)."""
        adapted = self.adapt_task(params, x_support, y_support, inner_steps)
        support = x_support.expand(x_query.shape[0], *x_support.shape)  # (queries, support, ...)
        batches = torch.cat([support, x_query.unsqueeze(1)], 1)  # (queries, support + 1, ...)
        return vmap(lambda x: functional_call(self.model, adapted, (x,))[-1])(batches)  # (queries, ...)

    def meta_gradient(self, params: Params, episode: Episode) -> tuple[Params, dict]:
        """Gradient of the mean query loss after adaptation with respect to params, plus metrics."""
        outputs = self.predict(params, episode.x_support, episode.y_support, episode.x_query)
        loss = batched_loss(outputs, episode.y_query, self.loss_fn)
        grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        grads = {k: torch.zeros_like(p) if g is None else g for (k, p), g in zip(params.items(), grads)}
        return grads, metrics(loss, outputs, episode.y_query)


def adam(params: Params, lr: float) -> torch.optim.Adam:
    """Adam over a params dict: the fused kernel when the parameters are on a GPU (one launch for all of them)."""
    values = list(params.values())
    return torch.optim.Adam(values, lr=lr, fused=True if values and all(p.is_cuda for p in values) else None)


def metrics(loss: torch.Tensor, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """loss, and accuracy when the targets are class labels, as 0-dim tensors (read them only when logging)."""
    out = {"loss": loss.detach()}
    if not targets.is_floating_point():
        out["accuracy"] = accuracy(outputs.detach(), targets).mean()
    return out
